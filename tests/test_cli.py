"""`zoo compress` as a user types it, on a tiny local model folder and local text."""

import json
import re

import click
import pytest
import torch
import transformers
from click.testing import CliRunner

import zoo
from tests.conftest import TINY_EVAL, TINY_RUN
from zoo.cli import main
from zoo.compression.layer import CompotLinear


def _compress(*args):
    return CliRunner().invoke(main, ["compress", *map(str, args)], catch_exceptions=False)


def test_compress_a_local_folder_end_to_end(tmp_path, model_dir, text_file):
    out = tmp_path / "out"
    result = _compress(model_dir, *TINY_RUN, "--calibration", text_file, "--iters", 3, "--out", out)
    assert result.exit_code == 0, result.output
    assert "achieved" in result.output and "Saved to" in result.output
    record = json.loads((out / "compot_record.json").read_text())
    assert record["calibration"]["tokens"] == 64 and record["method"] == "compot"
    assert abs(record["achieved_cr"] - 0.3) < 0.05 and abs(record["eq11_cr"] - record["achieved_cr"]) < 1e-3
    assert record["peak_memory_mb"] > 0 and record["compression_seconds"] > 0
    assert len(record["layers"]) == 14 and record["config"]["iters"] == 3
    model = zoo.load(out)
    assert sum(isinstance(m, CompotLinear) for m in model.modules()) == 14
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(out)("the quick brown fox", return_tensors="pt").input_ids
    assert torch.isfinite(model(ids).logits).all()

    again = _compress(model_dir, "--calibration", text_file, "--out", out)
    assert again.exit_code == 1 and "exists; pass overwrite=True (--overwrite)" in again.output


def test_the_record_s_peak_memory_leaves_out_the_base_s_evaluation(tmp_path, model_dir, text_file, monkeypatch):
    """Scoring the base before compression is not what the compression needs (the plan is compared
    with the record's peak): an evaluation that held 1 GiB more must not show in the record."""
    import numpy as np

    from zoo.modalities.base import get_adapter
    from zoo.pipeline import peak_memory_mb

    adapter = type(get_adapter("llm"))
    real, during = adapter.evaluate, []

    def heavy(self, *args, **kwargs):
        held = np.ones(2**30 // 8)  # touched: resident
        during.append(peak_memory_mb())
        del held
        return real(self, *args, **kwargs)

    monkeypatch.setattr(adapter, "evaluate", heavy)
    out = tmp_path / "out"
    result = _compress(model_dir, *TINY_RUN, "--calibration", text_file, "--iters", 2, "--out", out, *TINY_EVAL)
    assert result.exit_code == 0, result.output
    record = json.loads((out / "compot_record.json").read_text())
    assert during and record["peak_memory_mb"] < during[0] - 512


def test_eval_writes_a_scorecard(tmp_path, model_dir, text_file):
    out = tmp_path / "out"
    result = _compress(
        model_dir, *TINY_RUN, "--calibration", text_file, "--iters", 2, "--out", out, *TINY_EVAL, "--method", "svd-llm"
    )
    assert result.exit_code == 0, result.output
    card = json.loads((out / "scorecard.json").read_text())
    by_task = {(m["task"], m["name"]): m for m in card["metrics"]}
    metric = by_task["perplexity/wiki-offline", "perplexity"]
    assert metric["base"] > 1 and metric["compressed"] > 1
    # Offline, the paper's zero-shot tasks give way to the local ones, scored by lm-eval.
    acc = by_task["zoo_cloze_mc_local", "acc"]
    assert 0 <= acc["base"] <= 1
    # lm-eval's standard error travels with its score; the item limit is on the scorecard.
    assert 0 < acc["base_stderr"] < 0.5 and 0 < acc["compressed_stderr"] < 0.5 and metric["base_stderr"] is None
    assert card["eval_limit"] == 5 and card["schema_version"] == 5
    # The run's own evaluation: the sets it scored (offline: the stand-ins), not the catalogue's lists.
    evaluation = card["evaluation"]
    assert evaluation["online"] is False and evaluation["eval_limit"] == 5 and evaluation["eval_windows"] == 2
    assert evaluation["scored"] == ["perplexity/wiki-offline", "zoo_lambada_local", "zoo_cloze_mc_local"]
    assert not {"eval_texts", "eval_tasks"} & evaluation.keys()
    assert card["versions"]["torch"] == torch.__version__ and card["versions"]["compot-zoo"] == zoo.__version__
    assert card["versions"]["transformers"] == transformers.__version__
    record = json.loads((out / "compot_record.json").read_text())
    assert record["calibration"]["samples"] == 4  # --n-samples 4, in one batch of windows
    assert {m["source"] for m in card["metrics"]} == {"stand-in"}  # offline: the local sets
    assert card["slice_score"]["scores"].keys() == {"perplexity/wiki-offline"}  # two windows, no zero-shot tasks
    assert "At most 5 items per task or set" in result.output and " ± " in result.output
    assert metric["recovery"] == pytest.approx(100 * metric["base"] / metric["compressed"])
    assert "| perplexity" in result.output


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["smollm-135m"], 1, "Did you mean: smollm2-135m"),
        (["smollm2-135m", "--cr", "1.5"], 2, "1.5 must lie in (0, 1). Compression ratio: the share"),
        (["smollm2-135m", "--cr", "0"], 2, "0 must lie in (0, 1)"),
        (["smollm2-135m", "--ks-ratio", "0.5"], 1, "ks_ratio 0.5 must be at least 1"),
        (["smollm2-135m", "--min-cr", "0.3"], 1, "allocation guards must bracket the target"),
        (["smollm2-135m", "--method", "awq"], 1, "method 'awq' must be one of compot, gptq, svd-llm"),
        (["smollm2-135m", "--method", "gptq"], 1, "pass quantize (--quantize gptq-w3)"),
        (
            ["smollm2-135m", "--quantize", "gptq-w5"],
            2,
            "'gptq-w5' is not one of 'gptq-w2', 'gptq-w3', 'gptq-w4', 'gptq-w8'",
        ),
        (  # 128 does not divide SmolLM2's 576: found from the model's skeleton, before any weights load
            ["smollm2-135m", "--quantize", "gptq-w4"],
            1,
            "group size 128 does not divide model.layers.0.self_attn.q_proj's 576 input features (and 179 more)",
        ),
    ],
)
def test_bad_input_is_a_one_line_error(args, code, message):
    result = _compress(*args)
    assert result.exit_code == code and message in result.output and "Traceback" not in result.output


def test_an_engine_error_is_a_one_line_error(monkeypatch):
    """EngineError shares ZooError's base (UserError), which the CLI catches: no traceback, exit 1."""
    import zoo.pipeline
    from zoo.engine.errors import EngineError

    def fail(*_args):
        raise EngineError("layer.x: the Gram is not positive definite")

    monkeypatch.setattr(zoo.pipeline, "run_compress", fail)
    result = _compress("smollm2-135m")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output == "Error: layer.x: the Gram is not positive definite\n"


def test_cli_options_come_from_the_config():
    """Every compression setting has its flag, with the config's help; the CLI writes none of its own."""
    from zoo.compression.config import CompressionConfig

    command = main.commands["compress"]
    by_name = {p.name: p for p in command.params}
    for f in CompressionConfig.settings():
        assert by_name[f.name].help == f.metadata["help"] + (" Comma-separated." if f.name == "components" else "")


def _sections(text: str) -> dict[str, str]:
    """A help page's sections: title -> the text under it."""
    parts = re.split(r"^(\S[^\n]*):$", text, flags=re.MULTILINE)
    return {title: body for title, body in zip(parts[1::2], parts[2::2], strict=True)}


def test_zoo_help_lists_the_users_commands_apart_from_the_ci_ones():
    sections = _sections(CliRunner().invoke(main, ["--help"]).output)
    listed = {title: re.findall(r"^  (\w+) ", body, flags=re.MULTILINE) for title, body in sections.items()}
    assert {"compress", "browse", "publish", "list", "verify", "site"} <= set(listed["Commands"])
    assert listed["CI commands (the nightly job and the pull-request gate)"] == ["gate", "gather", "nightly"]


def test_compress_help_groups_every_option_and_gives_examples():
    output = CliRunner().invoke(main, ["compress", "--help"]).output
    sections = _sections(output)
    titles = ["Model and output", "Compression", "Calibration", "Evaluation", "Publishing", "Resources", "Other"]
    assert list(sections)[: len(titles)] == titles
    assert re.findall(r"^  (--[\w-]+)", sections["Other"], flags=re.MULTILINE) == ["--help"]
    assert "--seed INTEGER             Seed of the calibration samples' draw" in sections["Calibration"]
    assert "--quantize [gptq-w2|gptq-w3|gptq-w4|gptq-w8]" in sections["Compression"]
    assert "--plan " in sections["Resources"] and "--push " in sections["Publishing"]
    examples = re.findall(r"^    (zoo compress .+)$", output, flags=re.MULTILINE)
    assert len(examples) == 2
    for command in main.commands.values():  # every option of every command says what it does
        assert all(p.help for p in command.params if isinstance(p, click.Option)), command.name


def test_python_compress_goes_through_the_pipeline(text_file):
    """`zoo.compress` on an in-memory model: the catalogue's settings, the CLI's checks, records per matrix."""
    from tests.tiny_models import tiny_llama, tiny_tokenizer
    from zoo.errors import ZooError

    model, tokenizer = tiny_llama(), tiny_tokenizer()
    prompt = torch.tensor([[3, 17, 42, 9]])
    before = model(prompt).logits
    with pytest.raises(ZooError, match="cr 1.5 must lie in"):
        zoo.compress(model, tokenizer, cr=1.5)
    record = zoo.compress(model, tokenizer, cr=0.3, calibration=str(text_file), n_samples=4, seq_len=16, iters=2)
    layers = record.layers
    assert len(layers) == 14 and {r.method for r in layers} <= {"compot", "svd-llm", "dense"}  # forms per matrix
    factorized = sum(r.method in ("compot", "svd-llm") for r in layers)
    assert sum(isinstance(m, CompotLinear) for m in model.modules()) == factorized > 0
    after = model(prompt).logits
    assert torch.isfinite(after).all() and not torch.equal(after, before)


def test_python_compress_then_save_pretrained_reloads_identically(text_file, tmp_path):
    """The HfQuantizer convention: after zoo.compress the model carries its quantization_config, so
    save_pretrained (or push_to_hub) writes a folder that from_pretrained and zoo.load rebuild."""
    from transformers import AutoModelForCausalLM

    from tests.tiny_models import tiny_llama, tiny_tokenizer

    model, tokenizer = tiny_llama(), tiny_tokenizer()
    zoo.compress(model, tokenizer, cr=0.3, calibration=str(text_file), n_samples=4, seq_len=16, iters=2)
    prompt = torch.tensor([[3, 17, 42, 9]])
    expected = model(prompt).logits
    model.save_pretrained(tmp_path / "plain")
    assert torch.equal(zoo.load(tmp_path / "plain", inference=False)(prompt).logits, expected)
    for again in (AutoModelForCausalLM.from_pretrained(tmp_path / "plain"), zoo.load(tmp_path / "plain")):
        # the inference layout's product is rounded to 16 bits once: close, not equal
        torch.testing.assert_close(again(prompt).logits, expected, rtol=0.01, atol=0.01)
    zoo.save(model, tmp_path / "variant", tokenizer)  # the variant's checkpoint: the rest in 16 bits
    record = json.loads((tmp_path / "variant" / "compot_record.json").read_text())
    assert record["config"]["cr"] == 0.3 and record["config"]["dtype"] == "bfloat16"
    saved = zoo.load(tmp_path / "variant")(prompt).logits
    assert saved.dtype == torch.bfloat16  # loaded as saved, as a plain Hub checkpoint loads
    assert torch.equal(AutoModelForCausalLM.from_pretrained(tmp_path / "variant")(prompt).logits, saved)
    torch.testing.assert_close(saved.float(), expected, rtol=0.05, atol=0.05)  # 16-bit rounding of the rest only


def test_plan_prints_the_run_and_writes_nothing(tmp_path, model_dir, text_file):
    out = tmp_path / "out"
    result = _compress(model_dir, *TINY_RUN, "--calibration", text_file, "--out", out, "--plan")
    assert result.exit_code == 0, result.output
    assert "peak host memory" in result.output and "min to compress" in result.output
    assert "4 samples x 16 tokens on cpu" in result.output
    assert not out.exists()


def test_a_run_that_would_not_fit_is_refused_before_any_weights_are_read(tmp_path, model_dir, text_file):
    (model_dir / "model.safetensors").write_bytes(b"not weights")  # reading them would fail otherwise
    out = tmp_path / "out"
    result = _compress(model_dir, *TINY_RUN, "--calibration", text_file, "--out", out, "--max-host-memory", 0.01)
    assert result.exit_code == 1
    assert "of host memory, and 0.01 GiB is available; even one calibration sample would not fit" in result.output
    assert not out.exists()


def test_the_plan_names_the_samples_that_would_fit():
    from zoo.compression.plan import GIB, Plan
    from zoo.errors import ZooError

    plan = Plan(8 * 10**9, "bfloat16", 16 * GIB, "cuda", 256, 1024, 20 * GIB, 40 * GIB, GIB // 64, 100 * 2**20, 3600.0)
    plan.check(64 * GIB, 40 * GIB)  # fits exactly
    with pytest.raises(ZooError, match=r"40\.00 GiB of cuda memory, and 30\.00 GiB is available; --n-samples 153 "):
        plan.check(64 * GIB, 30 * GIB)  # 15 GiB besides the samples; 15 GiB / 100 MiB = 153 samples
    with pytest.raises(ZooError, match=r"20\.00 GiB of host memory, and 18\.00 GiB is available; --n-samples 128 "):
        plan.check(18 * GIB, None)  # 16 GiB besides the samples; 2 GiB / (1/64 GiB) = 128
    with pytest.raises(ZooError, match=r"would fit, or --offload-activations with these samples$"):
        plan.check(64 * GIB, 30 * GIB)


def test_offloading_activations_changes_nothing_in_the_checkpoint(tmp_path, model_dir, text_file):
    runs = {}
    for name, extra in (("kept", ()), ("offloaded", ("--offload-activations",))):
        out = tmp_path / name
        result = _compress(model_dir, *TINY_RUN, "--calibration", text_file, "--iters", 2, "--out", out, *extra)
        assert result.exit_code == 0, result.output
        runs[name] = (out / "model.safetensors").read_bytes()
    assert runs["kept"] == runs["offloaded"]


@pytest.mark.parametrize("method", ["compot", "gptq"])
def test_quantize_end_to_end_records_and_loads_the_packed_layers(tmp_path, model_dir, text_file, method):
    out = tmp_path / "out"
    args = ["--method", method, "--quantize", "gptq-w4", "--quantize-group-size", 32, "--iters", 2, "--forms", "single"]
    result = _compress(model_dir, *TINY_RUN, "--calibration", text_file, *args, "--out", out)
    assert result.exit_code == 0, result.output
    assert "bits=4" in result.output and "(gptq-w4 g32)" in result.output
    record = json.loads((out / "compot_record.json").read_text())
    assert {(r["method"], r["bits"], r["group_size"]) for r in record["layers"]} == {(method, 4, 32)}
    assert record["achieved_cr"] == pytest.approx(record["eq11_cr"]) and record["achieved_cr"] > 0.7
    assert "--quantize gptq-w4 --quantize-group-size 32" in record["command"]
    assert torch.isfinite(zoo.load(out)(torch.tensor([[1, 2, 3]])).logits).all()

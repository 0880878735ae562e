"""`zoo compress` as a user types it, on a tiny local model folder and local text."""

import json

import pytest
import torch
from click.testing import CliRunner

import zoo
from zoo.cli import main
from zoo.layer import CompotLinear


def _compress(*args):
    return CliRunner().invoke(main, ["compress", *map(str, args)], catch_exceptions=False)


def test_compress_a_local_folder_end_to_end(tmp_path, model_dir, text_file):
    out = tmp_path / "out"
    result = _compress(model_dir, "--cr", 0.3, "--calibration", text_file, "--n-samples", 4, "--seq-len", 16,
                       "--iters", 3, "--out", out)
    assert result.exit_code == 0, result.output
    assert "achieved" in result.output and "Saved to" in result.output
    manifest = json.loads((out / "compot_manifest.json").read_text())
    assert manifest["calibration"]["tokens"] == 64 and manifest["method"] == "compot"
    assert abs(manifest["achieved_cr_stored"] - 0.3) < 0.05
    assert manifest["peak_memory_mb"] > 0 and manifest["compression_seconds"] > 0
    model = zoo.load(out)
    assert sum(isinstance(m, CompotLinear) for m in model.modules()) == 14
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(out)("the quick brown fox", return_tensors="pt").input_ids
    assert torch.isfinite(model(ids).logits).all()

    again = _compress(model_dir, "--calibration", text_file, "--out", out)
    assert again.exit_code == 1 and "exists; pass --overwrite" in again.output


def test_eval_writes_a_scorecard(tmp_path, model_dir, text_file):
    out = tmp_path / "out"
    result = _compress(model_dir, "--cr", 0.3, "--calibration", text_file, "--n-samples", 4, "--seq-len", 16,
                       "--iters", 2, "--out", out, "--eval", "--eval-windows", 2, "--eval-limit", 10, "--method", "svd-llm")
    assert result.exit_code == 0, result.output
    card = json.loads((out / "scorecard.json").read_text())
    by_task = {(m["task"], m["name"]): m for m in card["metrics"]}
    metric = by_task["perplexity/wiki-offline", "perplexity"]
    assert metric["base"] > 1 and metric["compressed"] > 1
    # Offline, the paper's zero-shot tasks give way to the local ones, scored by lm-eval.
    assert 0 <= by_task["zoo_cloze_mc_local", "acc"]["base"] <= 1
    assert metric["recovery"] == pytest.approx(100 * metric["base"] / metric["compressed"])
    assert "| perplexity" in result.output


@pytest.mark.parametrize("args, message", [
    (["smollm-135m"], "Did you mean: smollm2-135m"),
    (["smollm2-135m", "--cr", "1.5"], "CR must lie in (0, 1)"),
    (["smollm2-135m", "--cr", "0"], "CR must lie in (0, 1)"),
])
def test_bad_input_is_a_one_line_error(args, message):
    result = _compress(*args)
    assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output

"""benchmarks/bench_runtime.py: repeats alternate base and variant, each measure is a median with
its range, and decode speed is timed token by token inside one generation."""

import pytest

from benchmarks.bench_runtime import TokenClock, alternate, measure, summary, table


def test_repeats_alternate_base_and_variant():
    order = []
    runs = alternate(lambda folder: order.append(folder) or {"x": len(order)}, {"base": "b", "variant": "v"}, 3)
    assert order == ["b", "v", "b", "v", "b", "v"]
    assert [r["x"] for r in runs["base"]] == [1, 3, 5] and [r["x"] for r in runs["variant"]] == [2, 4, 6]


def test_a_measure_is_its_median_with_the_range_of_the_repeats():
    runs = [{"decode_1": v} for v in (10.0, 30.0, 12.0, 11.0, 200.0)]  # one outlier moves no median
    assert summary(runs, "decode_1", 1) == (12.0, "12.0 [10.0-200.0]")
    base = [dict.fromkeys(("file_bytes", "memory_load", "memory_generate", "prefill", "decode_1", "decode_8"), 2.0)]
    variant = [{k: v / 2 for k, v in base[0].items()}]
    assert all(line.endswith("| 0.500 |") for line in table(base, variant)[2:])


def test_decode_speed_is_timed_between_the_first_and_last_generated_tokens():
    clock = TokenClock()
    clock.times = [0.0, 5.0, 5.5, 6.0, 6.5]  # the prompt, then a first token after a 5 s prefill
    assert clock.rate(batch=2) == pytest.approx(2 * 3 / 1.5)  # 3 decoding steps in 1.5 s, 2 rows each


def test_measure_runs_a_model_as_a_user_would(model_dir):
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(model_dir).save_pretrained(model_dir)  # a single model.safetensors
    result = measure(model_dir, new_tokens=4, threads=1)
    assert result["file_bytes"] == (model_dir / "model.safetensors").stat().st_size
    assert 0 < result["memory_load"] <= result["memory_generate"]
    assert result["prefill"] > 0 and result["decode_8"] > result["decode_1"] > 0

"""The plan against a run with a real Llama-3-8B block: about 20 CPU-minutes on our 2-core
machine (half of it the plan's own probes), too much for every CI run, so it runs when asked:
ZOO_LARGE_TESTS=1 scripts/test.sh tests/test_plan_llama8b.py"""

import os

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tests.planned import planned_and_measured_host_memory
from tests.tiny_models import tiny_tokenizer

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.environ.get("ZOO_LARGE_TESTS"), reason="set ZOO_LARGE_TESTS=1 to run (20 CPU-minutes)"),
]

# Llama-3-8B's block: width 4096, 32 query and 8 key/value heads, SwiGLU 14336, rope theta 5e5.
LLAMA_3_8B_BLOCK = dict(
    hidden_size=4096,
    intermediate_size=14336,
    num_attention_heads=32,
    num_key_value_heads=8,
    rope_theta=500000.0,
    rms_norm_eps=1e-5,
    max_position_embeddings=8192,
)


def test_peak_host_memory_of_a_llama_3_8b_block_is_within_a_quarter_of_the_plan(tmp_path, text_file):
    """One block of Llama-3-8B's shapes, random bfloat16 weights, the test tokenizer's vocabulary:
    the plan, made before loading, against the run's own measured peak resident memory."""
    folder = tmp_path / "llama-3-8b-block"
    tokenizer = tiny_tokenizer()
    config = LlamaConfig(**LLAMA_3_8B_BLOCK, num_hidden_layers=1, vocab_size=len(tokenizer), torch_dtype="bfloat16")
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del model
    args = [folder, "--cr", 0.2, "--calibration", text_file, "--n-samples", 4, "--seq-len", 64, "--iters", 1]
    planned, measured = planned_and_measured_host_memory(args, tmp_path / "out")
    print(f"Llama-3-8B block: planned {planned:.2f} GiB, measured {measured:.2f} GiB")
    assert 0.75 * planned <= measured <= 1.25 * planned

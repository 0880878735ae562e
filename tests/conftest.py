"""Tests never reach the Hub: our machines cannot, and a test must not depend on it."""

import json
import os

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"  # forced: an exported HF_HUB_OFFLINE=0 must not send the tests online
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if not torch.cuda.is_available():  # the CUDA kernel's tests run it in Triton's interpreter, which must be
    os.environ.setdefault("TRITON_INTERPRET", "1")  # chosen before anything imports triton


TEXT = (
    "the quick brown fox jumps over a lazy dog while seven wizards quietly judge boxing matches "
    "in london and paris during cold winter evenings with hot tea "
)


@pytest.fixture
def model_dir(tmp_path):
    """A tiny random Llama with a real (word-level) tokenizer, saved as a transformers folder."""
    from tests.tiny_models import tiny_llama, tiny_tokenizer

    folder = tmp_path / "tiny-llama"
    tiny_llama().save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture
def text_file(tmp_path):
    """Calibration text in the tiny tokenizer's vocabulary, as a local JSONL set."""
    path = tmp_path / "calib.jsonl"
    path.write_text("\n".join(json.dumps({"text": TEXT * 4}) for _ in range(20)))
    return path


# `zoo compress` arguments for a tiny model: a quick run at CR 0.3, and a quick evaluation.
TINY_RUN = ("--cr", 0.3, "--n-samples", 4, "--seq-len", 16)
TINY_EVAL = ("--eval", "--eval-windows", 2, "--eval-limit", 5)

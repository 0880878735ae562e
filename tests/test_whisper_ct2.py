"""CTranslate2 Whisper -> transformers: exact on a tiny model written in CT2's layout, and
transcribing real read speech after converting the packaged tiny.en and base models."""

import re
import struct
import time
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoProcessor, WhisperConfig, WhisperForConditionalGeneration, WhisperProcessor

from zoo.errors import ZooError
from zoo.sources.assets import fetch_asset
from zoo.sources.converters import whisper_ct2
from zoo.sources.converters.whisper_ct2 import convert_ct2_whisper, packaged_whisper_dir, read_ct2_model

F32, I8, I16, F16, BF16 = 0, 1, 2, 4, 5
_CODES = {np.dtype("int8"): I8, np.dtype("int16"): I16}
_SPECIAL = [
    "<|endoftext|>",
    "<|startoftranscript|>",
    "<|en|>",
    "<|translate|>",
    "<|transcribe|>",
    "<|startoflm|>",
    "<|startofprev|>",
    "<|nocaptions|>",
    "<|notimestamps|>",
]
_ROUND = {F32: torch.float32, F16: torch.float16, BF16: torch.bfloat16}


# --- a CTranslate2 writer, independent of the module's name table --------------------------------


def _string(text: str) -> bytes:
    data = text.encode() + b"\0"
    return struct.pack("<H", len(data)) + data


def _encode(value: np.ndarray, code: int) -> bytes:
    if code == BF16:
        return (value.astype("<f4").view("<u4") >> 16).astype("<u2").tobytes()
    return value.astype({F32: "<f4", F16: "<f2", I8: "i1", I16: "<i2"}[code]).tobytes()


def write_ct2(path: Path, variables: dict[str, np.ndarray], float_code: int = F32, version: int = 6) -> Path:
    """model.bin as CTranslate2 writes it, aliasing a variable equal to an earlier one as its converter does."""
    stored: dict[str, np.ndarray] = {}
    aliases: dict[str, str] = {}
    for name, value in variables.items():
        same = [
            n
            for n, v in stored.items()
            if v.dtype == value.dtype and v.shape == value.shape and np.array_equal(v, value)
        ]
        if same and value.ndim:
            aliases[name] = same[0]
        else:
            stored[name] = value
    parts = [struct.pack("<I", version), _string("WhisperSpec"), struct.pack("<II", 3, len(stored))]
    for name, value in stored.items():
        code = float_code if value.dtype.kind == "f" else _CODES[value.dtype]
        data = _encode(value, code)
        parts += [
            _string(name),
            struct.pack(f"<B{value.ndim}I", value.ndim, *value.shape),
            struct.pack("<BI", code, len(data)),
            data,
        ]
    parts.append(struct.pack("<I", len(aliases)))
    parts += [_string(a) + _string(t) for a, t in aliases.items()]
    path.write_bytes(b"".join(parts))
    return path


def ct2_variables(model: WhisperForConditionalGeneration) -> dict[str, np.ndarray]:
    """CT2's WhisperSpec names for a transformers Whisper, fused the way CT2's converter fuses them."""
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    config = model.config
    out: dict[str, np.ndarray] = {
        "decoder/activation": np.int8(3),
        "decoder/alibi": np.int8(0),
        "decoder/alignment_heads": np.int16(1),
        "decoder/alignment_layer": np.int16(-1),
        "decoder/num_heads": np.int16(config.decoder_attention_heads),
        "decoder/pre_norm": np.int8(1),
        "decoder/scale_embeddings": np.int8(0),
        "decoder/start_from_zero_embedding": np.int8(0),
        "encoder/num_heads": np.int16(config.encoder_attention_heads),
        "decoder/embeddings/weight": sd["model.decoder.embed_tokens.weight"],
    }

    def norm(ct2: str, hf: str) -> None:
        out[f"{ct2}/gamma"], out[f"{ct2}/beta"] = sd[f"{hf}.weight"], sd[f"{hf}.bias"]

    def linear(ct2: str, *hf: str) -> None:  # fused along the output dim; k has no bias: zeros
        out[f"{ct2}/weight"] = np.concatenate([sd[f"{h}.weight"] for h in hf])
        out[f"{ct2}/bias"] = np.concatenate(
            [sd.get(f"{h}.bias", np.zeros(len(sd[f"{h}.weight"]), np.float32)) for h in hf]
        )

    for conv in ("conv1", "conv2"):
        out[f"encoder/{conv}/weight"], out[f"encoder/{conv}/bias"] = (
            sd[f"model.encoder.{conv}.{p}"] for p in ("weight", "bias")
        )
    for stack, layers in (("encoder", config.encoder_layers), ("decoder", config.decoder_layers)):
        out[f"{stack}/position_encodings/encodings"] = sd[f"model.{stack}.embed_positions.weight"]
        norm(f"{stack}/layer_norm", f"model.{stack}.layer_norm")
        for i in range(layers):
            c, h = f"{stack}/layer_{i}", f"model.{stack}.layers.{i}"
            norm(f"{c}/self_attention/layer_norm", f"{h}.self_attn_layer_norm")
            linear(f"{c}/self_attention/linear_0", *(f"{h}.self_attn.{x}_proj" for x in "qkv"))
            linear(f"{c}/self_attention/linear_1", f"{h}.self_attn.out_proj")
            if stack == "decoder":
                norm(f"{c}/attention/layer_norm", f"{h}.encoder_attn_layer_norm")
                linear(f"{c}/attention/linear_0", f"{h}.encoder_attn.q_proj")
                linear(f"{c}/attention/linear_1", f"{h}.encoder_attn.k_proj", f"{h}.encoder_attn.v_proj")
                linear(f"{c}/attention/linear_2", f"{h}.encoder_attn.out_proj")
            norm(f"{c}/ffn/layer_norm", f"{h}.final_layer_norm")
            linear(f"{c}/ffn/linear_0", f"{h}.fc1")
            linear(f"{c}/ffn/linear_1", f"{h}.fc2")
    out["decoder/projection/weight"] = sd["proj_out.weight"]  # tied: written as an alias
    return out


def _tokenizer_json(path: Path) -> None:
    """Byte-level BPE without merges (ids 0-255) and Whisper's special tokens from id 256."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(_SPECIAL)
    tok.save(str(path))


def tiny_whisper(vocab_size: int, dtype: torch.dtype, seed: int = 0) -> WhisperForConditionalGeneration:
    """Random weights everywhere (norms too, so a swapped name shows), exactly representable in `dtype`."""
    torch.manual_seed(seed)
    config = WhisperConfig(
        vocab_size=vocab_size,
        d_model=8,
        encoder_layers=2,
        decoder_layers=3,
        encoder_attention_heads=2,
        decoder_attention_heads=4,
        encoder_ffn_dim=16,
        decoder_ffn_dim=24,
        pad_token_id=256,
        bos_token_id=256,
        eos_token_id=256,
        decoder_start_token_id=257,
    )
    model = WhisperForConditionalGeneration(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p).to(dtype).float())
        norms = model.model.decoder.layers  # two equal tensors: CT2 stores the second as an alias
        norms[1].final_layer_norm.weight.copy_(norms[0].final_layer_norm.weight)
    return model


def ct2_folder(
    folder: Path,
    model: WhisperForConditionalGeneration,
    float_code: int = F32,
    variables: dict[str, np.ndarray] | None = None,
) -> Path:
    """A CTranslate2 Whisper folder as faster-whisper ships it: model.bin, config.json, tokenizer.json."""
    folder.mkdir(parents=True)
    write_ct2(folder / "model.bin", variables or ct2_variables(model), float_code)
    (folder / "config.json").write_text(
        '{"alignment_heads": [[1, 0], [2, 3]], "lang_ids": [258], "suppress_ids": [1, 2, 259],'
        ' "suppress_ids_begin": [220, 256]}'
    )
    _tokenizer_json(folder / "tokenizer.json")
    return folder


# --- fast tests ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "vocab_size,float_code",
    [(300, F32), (300, BF16), (51865, F16)],
    ids=["english-f32", "english-bf16", "multilingual-f16"],
)
def test_round_trip_is_exact(tmp_path, vocab_size, float_code):
    original = tiny_whisper(vocab_size, _ROUND[float_code])
    out = convert_ct2_whisper(ct2_folder(tmp_path / "ct2", original, float_code), tmp_path / "hf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct2", "hf"]  # no temporary folder left

    model = WhisperForConditionalGeneration.from_pretrained(out).eval()
    assert model.dtype == torch.float32 and model.proj_out.weight is model.model.decoder.embed_tokens.weight
    expected, got = original.state_dict(), model.state_dict()
    assert sorted(got) == sorted(expected)
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    for key in (
        "encoder_layers",
        "decoder_layers",
        "encoder_attention_heads",
        "decoder_attention_heads",
        "encoder_ffn_dim",
        "decoder_ffn_dim",
        "d_model",
        "vocab_size",
        "num_mel_bins",
        "max_source_positions",
        "max_target_positions",
        "decoder_start_token_id",
    ):
        assert getattr(model.config, key) == getattr(original.config, key), key
    features = torch.randn(1, 80, 3000)
    decoder_ids = torch.tensor([[257, 264, 5, 6]])
    with torch.no_grad():
        assert torch.equal(
            model(features, decoder_input_ids=decoder_ids).logits,
            original(features, decoder_input_ids=decoder_ids).logits,
        )

    generation = model.generation_config
    assert (
        generation.decoder_start_token_id,
        generation.eos_token_id,
        generation.no_timestamps_token_id,
        generation.prev_sot_token_id,
    ) == (257, 256, 264, 262)
    assert generation.suppress_tokens == [1, 2, 259] and generation.begin_suppress_tokens == [220, 256]
    assert generation.alignment_heads == [[1, 0], [2, 3]]
    multilingual = vocab_size >= 51865
    assert generation.is_multilingual == multilingual
    if multilingual:
        assert generation.lang_to_id == {"<|en|>": 258}
        assert generation.task_to_id == {"transcribe": 260, "translate": 259}
        assert (generation.language, generation.task) == ("en", "transcribe")
    else:
        assert not hasattr(generation, "lang_to_id")

    processor = AutoProcessor.from_pretrained(out)
    assert processor.feature_extractor.feature_size == 80
    text_ids = processor.tokenizer("Hi", add_special_tokens=False).input_ids
    assert processor.tokenizer.decode([257, *text_ids, 256], skip_special_tokens=True) == "Hi"


def _tiny_ct2(tmp_path: Path) -> Path:
    return write_ct2(tmp_path / "model.bin", ct2_variables(tiny_whisper(300, torch.float32)))


@pytest.mark.parametrize("keep", [0, 3, 17, 0.5, -1], ids=["empty", "version", "header", "middle", "aliases"])
def test_truncated_file_names_file_and_offset(tmp_path, keep):
    data = _tiny_ct2(tmp_path).read_bytes()
    cut = tmp_path / "cut.bin"
    cut.write_bytes(data[: int(len(data) * keep) if isinstance(keep, float) else keep % len(data)])
    with pytest.raises(ZooError, match=rf"{re.escape(str(cut))}: truncated.* at offset \d+"):
        read_ct2_model(cut)


def test_corrupt_headers_are_refused(tmp_path):
    path = _tiny_ct2(tmp_path)
    data = path.read_bytes()
    # first variable's dtype byte: version, spec name, revision, count, its name, rank, its dims
    first = read_ct2_model(path).variables
    name, value = next(iter(first.items()))
    dtype_at = 4 + 2 + len("WhisperSpec") + 1 + 4 + 4 + 2 + len(name) + 1 + 1 + 4 * value.ndim
    path.write_bytes(data[:dtype_at] + b"\x09" + data[dtype_at + 1 :])
    with pytest.raises(
        ZooError,
        match=rf"{re.escape(str(path))}: unknown dtype code 9 for variable {name} "
        rf".*at offset {dtype_at}",
    ):
        read_ct2_model(path)
    path.write_bytes(struct.pack("<I", 5) + data[4:])
    with pytest.raises(ZooError, match=r"unsupported CTranslate2 binary version 5 .*at offset 0"):
        read_ct2_model(path)
    path.write_bytes(data + b"\0")
    with pytest.raises(ZooError, match=rf"1 unexpected bytes after the aliases at offset {len(data)}"):
        read_ct2_model(path)


def test_variables_that_do_not_fit_whisper_are_named(tmp_path):
    model = tiny_whisper(300, torch.float32)
    variables = ct2_variables(model)
    del variables["decoder/layer_2/ffn/linear_0/weight"]
    variables["decoder/extra/weight"] = np.ones(3, np.float32)
    folder = ct2_folder(tmp_path / "extra", model, variables=variables)
    with pytest.raises(ZooError, match=r"model.bin: no transformers name for variables \['decoder/extra/weight'\]"):
        convert_ct2_whisper(folder, tmp_path / "out")
    del variables["decoder/extra/weight"]
    folder = ct2_folder(tmp_path / "missing", model, variables=variables)
    with pytest.raises(ZooError, match=r"missing \['model.decoder.layers.2.fc1.weight'\], unexpected \[\]"):
        convert_ct2_whisper(folder, tmp_path / "out")
    variables = {**ct2_variables(model), "decoder/activation": np.int8(1)}
    folder = ct2_folder(tmp_path / "relu", model, variables=variables)
    with pytest.raises(ZooError, match="decoder/activation is 1; transformers' Whisper needs 3"):
        convert_ct2_whisper(folder, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_refuses_a_non_empty_target(tmp_path):
    folder = ct2_folder(tmp_path / "ct2", tiny_whisper(300, torch.float32))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(ZooError, match=f"{re.escape(str(tmp_path / 'out'))} exists and is not empty"):
        convert_ct2_whisper(folder, tmp_path / "out")
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"


def test_packaged_whisper_dir_converts_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPOT_ZOO_CACHE", str(tmp_path / "cache"))
    source = ct2_folder(tmp_path / "asset", tiny_whisper(300, torch.float32))
    spelling = tmp_path / "english.json"
    spelling.write_text('{"colour": "color"}')
    fetched = []
    monkeypatch.setattr(
        whisper_ct2,
        "fetch_asset",
        lambda name: fetched.append(name) or (spelling if name == "whisper-english-spelling" else source),
    )
    out = packaged_whisper_dir("whisper-tiny.en-ct2")
    assert out == tmp_path / "cache" / "converted" / "whisper-tiny.en-ct2"
    assert WhisperProcessor.from_pretrained(out).tokenizer.english_spelling_normalizer == {"colour": "color"}

    def refuse(*args):
        raise AssertionError("a complete folder must be reused")

    monkeypatch.setattr(whisper_ct2, "convert_ct2_whisper", refuse)
    assert packaged_whisper_dir("whisper-tiny.en") == out  # the catalogue's alias names the same folder
    assert packaged_whisper_dir("whisper-tiny.en-ct2") == out and fetched == [
        "whisper-tiny.en-ct2",
        "whisper-english-spelling",
    ]
    with pytest.raises(
        ZooError,
        match=re.escape(
            "no packaged CTranslate2 Whisper 'whisper-large'; packaged: "
            "whisper-tiny.en (whisper-tiny.en-ct2), whisper-base"
        ),
    ):
        packaged_whisper_dir("whisper-large")


# --- slow: the real packaged models on real speech ------------------------------------------------


def _read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path)) as f:
        assert (f.getframerate(), f.getnchannels(), f.getsampwidth()) == (16000, 1, 2), path
        return np.frombuffer(f.readframes(f.getnframes()), "<i2").astype(np.float32) / 32768


def _words(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split())


@pytest.mark.slow
@pytest.mark.parametrize(
    "asset,prompt,max_wer",
    [
        ("whisper-tiny.en-ct2", ["<|startoftranscript|>", "<|notimestamps|>"], 0.10),
        ("whisper-base-ct2", ["<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>"], 0.10),
    ],
    ids=["tiny.en", "base"],
)
def test_converted_model_transcribes_librivox(tmp_path, asset, prompt, max_wer):
    jiwer = pytest.importorskip("jiwer")
    source = fetch_asset(asset)
    start = time.perf_counter()
    out = convert_ct2_whisper(source, tmp_path / asset)
    seconds = time.perf_counter() - start
    model = WhisperForConditionalGeneration.from_pretrained(out).eval()
    processor = AutoProcessor.from_pretrained(out)

    wavs = sorted(fetch_asset("librivox-speech").glob("*.wav"))
    assert len(wavs) == 5
    features = processor([_read_wav(w) for w in wavs], sampling_rate=16000, return_tensors="pt").input_features
    with torch.no_grad():
        generated = model.generate(features)  # greedy: the generation config sets no beams or sampling
    hypotheses = [_words(t) for t in processor.batch_decode(generated, skip_special_tokens=True)]
    references = [_words(w.with_suffix(".txt").read_text()) for w in wavs]
    wer = jiwer.wer(references, hypotheses)
    print(f"\n{asset}: converted in {seconds:.1f} s, greedy WER {wer:.3f} on {len(wavs)} LibriVox utterances")
    for ref, hyp in zip(references, hypotheses, strict=True):
        print(f"  ref: {ref}\n  hyp: {hyp}")
    assert wer <= max_wer

    # The greedy tokens are what the model predicts after the expected prompt, so generate used it.
    prompt_ids = torch.tensor(processor.tokenizer.convert_tokens_to_ids(prompt)).expand(len(wavs), -1)
    eot = model.generation_config.eos_token_id
    with torch.no_grad():
        logits = model(features, decoder_input_ids=torch.cat([prompt_ids, generated[:, :-1]], 1)).logits
    predicted = logits[:, len(prompt) - 1 :].argmax(-1)
    for row, tokens in zip(predicted, generated, strict=True):
        length = int((tokens == eot).nonzero()[0]) + 1 if (tokens == eot).any() else len(tokens)
        assert torch.equal(row[:length], tokens[:length])

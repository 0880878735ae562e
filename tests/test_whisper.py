"""The Whisper adapter on a tiny random Whisper with the real tiny.en tokenizer and task tokens."""

import json
import wave

import numpy as np
import pytest
import torch
from transformers import AutoModelForSpeechSeq2Seq, WhisperConfig, WhisperForConditionalGeneration, WhisperProcessor

import zoo
from tests.offload import assert_hooked_capture_matches
from tests.planned import planned_and_measured_host_memory
from tests.records import make_record
from zoo.compression.apply import compress_model
from zoo.compression.config import CompressionConfig
from zoo.compression.grams import block_grams, capture_block_inputs
from zoo.compression.layer import CompotLinear
from zoo.errors import ZooError
from zoo.format.checkpoint import save_compressed
from zoo.modalities.whisper import ADAPTER, sentence_case, task_prefix
from zoo.sources.converters.whisper_ct2 import packaged_whisper_dir, save_processor
from zoo.sources.loading import LoadedModel

WORDS = "the quick brown fox jumps over a lazy dog while seven wizards quietly judge boxing matches".split()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Real tokenizer, feature extractor and generation config; random weights at toy width."""
    return _whisper_folder(tmp_path_factory.mktemp("tiny-whisper"), torch.float32, 64, 2, 2, 4, 128)


def _whisper_folder(folder, dtype, width: int, encoders: int, decoders: int, heads: int, ffn: int):
    """A Whisper of these sizes with random weights, saved with tiny.en's processor and generation config."""
    real = packaged_whisper_dir("whisper-tiny.en")
    config = WhisperConfig.from_pretrained(real)
    config.update(
        dict(
            d_model=width,
            encoder_layers=encoders,
            decoder_layers=decoders,
            encoder_attention_heads=heads,
            decoder_attention_heads=heads,
            encoder_ffn_dim=ffn,
            decoder_ffn_dim=ffn,
        )
    )
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config).to(dtype).eval()
    model.generation_config = WhisperForConditionalGeneration.from_pretrained(real).generation_config
    model.save_pretrained(folder)
    save_processor(WhisperProcessor.from_pretrained(real), folder)
    return folder


@pytest.fixture(scope="module")
def speech_folder(tmp_path_factory):
    """name.wav + name.txt pairs: noise bursts at 22.05 kHz (resampled on load) with short texts."""
    folder = tmp_path_factory.mktemp("speech")
    rng = np.random.default_rng(0)
    for i in range(4):
        samples = (rng.standard_normal(22050 * (1 + i % 2)) * 3000).astype("<i2")
        with wave.open(str(folder / f"utt{i}.wav"), "wb") as w:
            w.setnchannels(1), w.setsampwidth(2), w.setframerate(22050)
            w.writeframes(samples.tobytes())
        (folder / f"utt{i}.txt").write_text(" ".join(WORDS[i : i + 5 + i]).upper())
    return folder


def _load(folder):
    from zoo.sources.catalogue import resolve

    return ADAPTER.load(resolve(str(folder)))


def test_default_stack_is_the_decoder_and_the_encoder_joins_on_request(tiny):
    loaded = _load(tiny)
    (decoder,) = ADAPTER.stacks(loaded.model)
    assert decoder.name == "decoder" and [p for p, _ in decoder.blocks] == [
        "model.decoder.layers.0",
        "model.decoder.layers.1",
    ]
    assert sum(len(g) for g in decoder.groups) == 10  # q k v o, cross q k v o, fc1 fc2
    both = ADAPTER.stacks(loaded.model, ["decoder", "encoder"])
    assert [s.name for s in both] == ["encoder", "decoder"]  # calibration order, not request order
    with pytest.raises(ZooError, match="unknown Whisper component"):
        ADAPTER.stacks(loaded.model, ["decoder", "vision"])


def test_calibration_teacher_forces_the_transcript_after_the_task_prefix(tiny, speech_folder):
    loaded = _load(tiny)
    data = ADAPTER.calibration(loaded, str(speech_folder), n_samples=4, seq_len=448, seed=0, online=False)
    assert len(data.batches) == 4
    prefix = task_prefix(loaded.model.generation_config)
    tokenizer = loaded.processor.tokenizer
    assert tokenizer.convert_ids_to_tokens(prefix) == ["<|startoftranscript|>", "<|notimestamps|>"]
    first = data.batches[0]
    ids = first["decoder_input_ids"][0].tolist()
    assert ids[: len(prefix)] == prefix
    expected = sentence_case((speech_folder / "utt0.txt").read_text())
    assert tokenizer.decode(ids[len(prefix) :]).strip() == expected
    assert first["input_features"].shape == (1, 80, 3000)
    assert data.tokens == sum(b["decoder_input_ids"].shape[1] for b in data.batches)
    again = ADAPTER.calibration(loaded, str(speech_folder), n_samples=4, seq_len=448, seed=0, online=False)
    assert again.fingerprint == data.fingerprint
    short = ADAPTER.calibration(loaded, str(speech_folder), n_samples=4, seq_len=3, seed=0, online=False)
    assert all(b["decoder_input_ids"].shape[1] <= 3 for b in short.batches)


def test_sentence_case_only_touches_all_caps_transcripts():
    assert sentence_case("HE HOPED THERE WOULD  BE STEW") == "He hoped there would be stew"
    assert sentence_case("Mr. Quilter is the apostle.") == "Mr. Quilter is the apostle."


def test_cross_attention_grams_come_from_the_encoder_output(tiny, speech_folder):
    loaded = _load(tiny)
    data = ADAPTER.calibration(loaded, str(speech_folder), n_samples=4, seq_len=448, seed=0, online=False)
    (decoder,) = ADAPTER.stacks(loaded.model)
    inputs = capture_block_inputs(loaded.model, decoder.blocks[0][1], data.batches)
    stats, _ = block_grams(decoder.blocks[0][1], decoder.groups, inputs)
    frames = loaded.model.config.max_source_positions
    assert stats["encoder_attn.k_proj"].tokens == 4 * frames
    assert stats["self_attn.q_proj"].tokens == data.tokens
    with torch.no_grad():
        encoded = loaded.model.model.encoder(data.batches[0]["input_features"]).last_hidden_state[0].double()
    # The first utterance's share of the Gram is exactly its encoder output's.
    alone, _ = block_grams(decoder.blocks[0][1], decoder.groups, inputs[:1])
    torch.testing.assert_close(alone["encoder_attn.k_proj"].gram, encoded.T @ encoded / frames, rtol=1e-4, atol=1e-6)


def test_the_part_before_each_stack_runs_the_same_through_offload_hooks(tiny, speech_folder):
    """What the device path does (weights copied module by module as they run), here onto the CPU
    itself: the same inputs reach both stacks' first blocks, and the model keeps its very tensors."""
    loaded = _load(tiny)
    data = ADAPTER.calibration(loaded, str(speech_folder), n_samples=2, seq_len=448, seed=0, online=False)
    assert_hooked_capture_matches(loaded.model, ADAPTER.stacks(loaded.model, ["encoder", "decoder"]), data.batches)


@pytest.mark.parametrize(
    "components, heal", [(None, 0), (["encoder", "decoder"], 0), (None, 3)], ids=["decoder", "both", "healed"]
)
def test_compress_save_reload_transcribes_the_same(tiny, speech_folder, tmp_path, components, heal):
    loaded = _load(tiny)
    data = ADAPTER.calibration(loaded, str(speech_folder), n_samples=4, seq_len=448, seed=0, online=False)
    reports = compress_model(
        loaded.model,
        ADAPTER.stacks(loaded.model, components),
        data,
        CompressionConfig(cr=0.3, iters=4, components=components, heal=heal),
    )
    compressed = sum(isinstance(m, CompotLinear) for m in loaded.model.modules())
    assert compressed == len(reports) == (20 if components is None else 32)
    assert all(r.name.startswith("model.decoder") for r in reports) == (components is None)

    features = data.batches[1]["input_features"]
    with torch.no_grad():
        expected_logits = loaded.model(
            input_features=features, decoder_input_ids=data.batches[1]["decoder_input_ids"]
        ).logits
        expected_ids = loaded.model.generate(features, max_new_tokens=6, do_sample=False)
    out = tmp_path / "ckpt"
    save_compressed(
        loaded.model,
        out,
        make_record(loaded.model, modality="whisper", auto_class=ADAPTER.auto_class),
        extra_files=lambda tmp: ADAPTER.save_processor(loaded, tmp),
    )
    assert json.loads((out / "config.json").read_text())["quantization_config"]["quant_method"] == "compot"
    loaders = [zoo.load(out, inference=False), zoo.load(out), AutoModelForSpeechSeq2Seq.from_pretrained(out).eval()]
    for kept_factors, model in zip([True, False, False], loaders, strict=True):
        with torch.no_grad():
            logits = model(input_features=features, decoder_input_ids=data.batches[1]["decoder_input_ids"]).logits
            ids = model.generate(features, max_new_tokens=6, do_sample=False)
        if kept_factors:
            assert torch.equal(logits, expected_logits) and torch.equal(ids, expected_ids)
        else:  # the inference layout's product is rounded to 16 bits once: close, not equal
            torch.testing.assert_close(logits, expected_logits, rtol=0.01, atol=0.01)
    tokenizer = WhisperProcessor.from_pretrained(out).tokenizer
    assert tokenizer.convert_tokens_to_ids("<|notimestamps|>") == loaded.model.generation_config.no_timestamps_token_id
    assert tokenizer.english_spelling_normalizer["colour"] == "color"  # WER normalises the same after reload


def test_a_model_that_is_not_whisper_is_refused(tiny):
    from tests.tiny_models import tiny_llama

    with pytest.raises(ZooError, match="is not a Whisper model"):
        ADAPTER.stacks(tiny_llama())
    loaded = LoadedModel(tiny_llama(), None, "tiny-llama")
    with pytest.raises(ZooError, match="is not a Whisper model"):
        ADAPTER.stacks(loaded.model, ["decoder"])


def test_python_compress_then_save_pretrained_reloads_identically(tiny, speech_folder, tmp_path):
    """zoo.compress leaves a model whose own save_pretrained writes a folder transformers reloads."""
    loaded = _load(tiny)
    model, processor = loaded.model, loaded.processor
    record = zoo.compress(model, processor, cr=0.3, calibration=str(speech_folder), n_samples=4, iters=2)
    assert record.modality == "whisper" and model.compot_record is record
    features = processor(np.zeros(16000, dtype="float32"), sampling_rate=16000, return_tensors="pt").input_features
    decoder_ids = torch.tensor([[50257, 50362, 262, 2068]])
    with torch.no_grad():
        expected = model(input_features=features, decoder_input_ids=decoder_ids).logits
    model.save_pretrained(tmp_path / "plain")
    with torch.no_grad():
        kept = zoo.load(tmp_path / "plain", inference=False)
        assert torch.equal(kept(input_features=features, decoder_input_ids=decoder_ids).logits, expected)
        for again in (
            AutoModelForSpeechSeq2Seq.from_pretrained(tmp_path / "plain").eval(),
            zoo.load(tmp_path / "plain"),
        ):
            logits = again(input_features=features, decoder_input_ids=decoder_ids).logits
            torch.testing.assert_close(logits, expected, rtol=0.01, atol=0.01)  # one 16-bit rounding apart
    zoo.save(model, tmp_path / "variant", processor)
    assert (tmp_path / "variant" / "compot_record.json").is_file() and (
        tmp_path / "variant" / "normalizer.json"
    ).is_file()


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the record's peak memory is the GPU's")
def test_peak_host_memory_of_a_large_v3_shaped_decoder_is_within_a_quarter_of_the_plan(tmp_path, speech_folder):
    """whisper-large-v3's decoder widths (d_model 1280, 20 heads, FFN 5120), two decoder blocks and
    one encoder block, random float16 weights: the plan, made before loading, against what the
    run itself measured (its record's peak resident memory)."""
    folder = _whisper_folder(tmp_path / "large-v3-shaped", torch.float16, 1280, 1, 2, 20, 5120)
    # healed, as this test was calibrated: without healing (Whisper's default since) the plan was seen
    # 20-35% under the measured peak for this shape, an open question (docs/big-models.md)
    args = [folder, "--cr", 0.2, "--calibration", speech_folder, "--n-samples", 4, "--iters", 1, "--heal", 32]
    planned, measured = planned_and_measured_host_memory(args, tmp_path / "out")
    print(f"large-v3-shaped decoder: planned {planned:.2f} GiB, measured {measured:.2f} GiB")
    assert 0.75 * planned <= measured <= 1.25 * planned

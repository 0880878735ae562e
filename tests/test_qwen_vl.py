"""The Qwen-VL adapter on tiny random Qwen2-VL, Qwen2.5-VL and Qwen3-VL models: only the language
tower is compressed, its blocks see the model's own vision tokens and positions, and the
checkpoint reloads with identical outputs."""

import json

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText

import zoo
from tests.offload import assert_hooked_capture_matches
from tests.records import make_record
from tests.tiny_vlm import GENERATIONS, photo, save_tiny_vlm
from zoo.compression.apply import compress_model
from zoo.compression.config import CompressionConfig
from zoo.compression.grams import block_grams, capture_block_inputs
from zoo.compression.layer import CompotLinear
from zoo.errors import ZooError
from zoo.format.checkpoint import save_compressed
from zoo.modalities.base import get_adapter
from zoo.modalities.qwen_vl import ADAPTER, chat_inputs
from zoo.sources.catalogue import resolve


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-vlm")
    return {gen: save_tiny_vlm(root / gen, gen) for gen in GENERATIONS}


@pytest.fixture(scope="module")
def questions(tmp_path_factory):
    """A local calibration folder: questions.jsonl beside its images, one question without an answer."""
    folder = tmp_path_factory.mktemp("questions")
    lines = []
    for i in range(5):
        photo(i, (80 + 10 * i, 120)).save(folder / f"img{i}.png")
        lines.append(
            {"image": f"img{i}.png", "question": "what is in the picture", **({"answer": "a cat"} if i % 2 else {})}
        )
    (folder / "questions.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return folder


def _load(folder):
    return ADAPTER.load(resolve(str(folder)))


def test_the_registry_and_a_local_folder_find_the_adapter(folders):
    assert get_adapter("vlm") is ADAPTER
    assert resolve(str(folders["qwen2_vl"])).modality == "vlm"


@pytest.mark.parametrize("generation", list(GENERATIONS))
def test_stacks_are_the_language_tower_split_where_deepstack_adds_vision(folders, generation):
    model = _load(folders[generation]).model
    stacks = ADAPTER.stacks(model)
    blocks = [p for s in stacks for p, _ in s.blocks]
    layers = model.config.text_config.num_hidden_layers
    assert blocks == [f"model.language_model.layers.{i}" for i in range(layers)]
    assert all(sum(len(g) for g in s.groups) == 7 for s in stacks)  # q k v o gate up down
    if generation == "qwen3_vl":  # DeepStack adds vision features after layers 0 and 1
        assert [s.name for s in stacks] == ["language[0:1]", "language[1:2]", "language[2:3]"]
    else:
        assert [s.name for s in stacks] == ["language"]
    with pytest.raises(ZooError, match="unknown Qwen-VL component.*vision tower stays dense"):
        ADAPTER.stacks(model, ["language", "vision"])


@pytest.mark.parametrize("generation", list(GENERATIONS))
def test_replayed_blocks_see_exactly_what_the_whole_model_feeds_them(folders, questions, generation):
    """Inputs captured at each stack's first block and replayed block by block equal the hidden
    states every block receives in a full forward pass: vision tokens, mrope and DeepStack included."""
    loaded = _load(folders[generation])
    data = ADAPTER.calibration(loaded, str(questions), n_samples=3, seq_len=256, seed=0, online=False)
    layers = loaded.model.model.language_model.layers
    seen = {i: [] for i in range(len(layers))}
    hooks = [
        layer.register_forward_pre_hook(lambda m, a, kw, i=i: seen[i].append(a[0].clone()), with_kwargs=True)
        for i, layer in enumerate(layers)
    ]
    with torch.no_grad():
        for batch in data.batches:
            loaded.model(**batch)
    for h in hooks:
        h.remove()
    for stack in ADAPTER.stacks(loaded.model):
        inputs = capture_block_inputs(loaded.model, stack.blocks[0][1], data.batches)
        for prefix, block in stack.blocks:
            index = int(prefix.rsplit(".", 1)[1])
            for got, want in zip(inputs, seen[index], strict=True):
                torch.testing.assert_close(got.args[0], want, rtol=1e-5, atol=1e-6)
            _, inputs = block_grams(block, stack.groups, inputs)
    if generation == "qwen3_vl":  # one stack across a DeepStack injection would miss the vision features
        first = capture_block_inputs(loaded.model, layers[0], data.batches)
        _, replayed = block_grams(layers[0], ADAPTER.stacks(loaded.model)[0].groups, first)
        assert not torch.allclose(replayed[0].args[0], seen[1][0])


@pytest.mark.parametrize("generation", list(GENERATIONS))
def test_the_part_before_each_stack_runs_the_same_through_offload_hooks(folders, questions, generation):
    """The device path's capture (weights copied module by module as they run), onto the CPU itself:
    the vision tower and the stacks before each first block give the same inputs."""
    loaded = _load(folders[generation])
    data = ADAPTER.calibration(loaded, str(questions), n_samples=2, seq_len=256, seed=0, online=False)
    assert_hooked_capture_matches(loaded.model, ADAPTER.stacks(loaded.model), data.batches)


def test_calibration_feeds_image_tokens_and_caps_the_sample(folders, questions):
    loaded = _load(folders["qwen2_vl"])
    data = ADAPTER.calibration(loaded, str(questions), n_samples=4, seq_len=256, seed=0, online=False)
    image_id = loaded.model.config.image_token_id
    assert len(data.batches) == 4 and data.tokens == sum(b["input_ids"].shape[1] for b in data.batches)
    for batch in data.batches:
        n_image = int((batch["input_ids"] == image_id).sum())
        assert n_image == batch["image_grid_thw"].prod() // 4 > 0  # 2x2 patches merge into one token
        assert batch["pixel_values"].dtype == loaded.model.dtype and batch["use_cache"] is False
    text = loaded.processor.tokenizer.decode(data.batches[0]["input_ids"][0])
    assert "<|vision_start|>" in text and text.rstrip().endswith(("<|im_end|>", "assistant"))
    again = ADAPTER.calibration(loaded, str(questions), n_samples=4, seq_len=256, seed=0, online=False)
    assert again.fingerprint == data.fingerprint
    assert (
        len({ADAPTER.calibration(loaded, str(questions), 2, 256, seed=s, online=False).fingerprint for s in range(4)})
        > 1
    )
    short = ADAPTER.calibration(loaded, str(questions), n_samples=4, seq_len=24, seed=0, online=False)
    assert all(b["input_ids"].shape[1] <= 24 and int((b["input_ids"] == image_id).sum()) <= 12 for b in short.batches)
    with pytest.raises(ZooError, match="would lose image tokens"):
        ADAPTER.calibration(loaded, str(questions), n_samples=1, seq_len=8, seed=0, online=False)


def test_offline_photo_set_gives_what_it_has(folders):
    loaded = _load(folders["qwen2_vl"])
    data = ADAPTER.calibration(loaded, "skimage-photos", n_samples=1000, seq_len=256, seed=0, online=False)
    assert data.name == "skimage-photos" and len(data.batches) > 20


@pytest.mark.parametrize("generation", list(GENERATIONS))
def test_compress_save_reload_answers_the_same(folders, questions, tmp_path, generation):
    loaded = _load(folders[generation])
    vision = {k: v.clone() for k, v in loaded.model.state_dict().items() if k.startswith("model.visual.")}
    data = ADAPTER.calibration(loaded, str(questions), n_samples=5, seq_len=256, seed=0, online=False)
    config = CompressionConfig(cr=0.3, iters=4, heal=3)  # healed: the tower's blocks fed their multimodal inputs
    reports = compress_model(loaded.model, ADAPTER.stacks(loaded.model), data, config)
    assert {r.name.rsplit(".", 3)[0] for r in reports} == {"model.language_model.layers"}
    assert sum(isinstance(m, CompotLinear) for m in loaded.model.modules()) == len(reports) > 0
    after = loaded.model.state_dict()
    assert vision and all(torch.equal(v, after[k]) for k, v in vision.items())  # vision tower and merger untouched

    inputs = chat_inputs(loaded.processor, [photo(7), "what is in the picture"])
    with torch.no_grad():
        expected_logits = loaded.model(**inputs).logits
        expected_ids = loaded.model.generate(**inputs, max_new_tokens=6, do_sample=False)
    out = tmp_path / "ckpt"
    save_compressed(
        loaded.model,
        out,
        make_record(loaded.model, modality="vlm", auto_class=ADAPTER.auto_class),
        extra_files=lambda tmp: ADAPTER.save_processor(loaded, tmp),
    )
    assert json.loads((out / "config.json").read_text())["quantization_config"]["quant_method"] == "compot"
    loaders = [zoo.load(out, inference=False), zoo.load(out), AutoModelForImageTextToText.from_pretrained(out).eval()]
    for kept_factors, model in zip([True, False, False], loaders, strict=True):
        assert type(model) is type(loaded.model)
        with torch.no_grad():
            logits = model(**inputs).logits
            if kept_factors:
                assert torch.equal(logits, expected_logits)
                assert torch.equal(model.generate(**inputs, max_new_tokens=6, do_sample=False), expected_ids)
            else:  # the inference layout's product is rounded to 16 bits once: close, not equal
                torch.testing.assert_close(logits, expected_logits, rtol=0.01, atol=0.01)
    reloaded = ADAPTER.load(resolve(str(out), "vlm"))  # the saved processor builds the same inputs
    again = chat_inputs(reloaded.processor, [photo(7), "what is in the picture"])
    assert all(torch.equal(again[k], v) for k, v in inputs.items())


def test_bad_inputs_are_named(folders, tmp_path):
    from tests.tiny_models import tiny_llama

    (tmp_path / "broken.png").write_bytes(b"not an image at all")
    (tmp_path / "questions.jsonl").write_text(json.dumps({"image": "broken.png", "question": "what is it"}) + "\n")
    loaded = _load(folders["qwen2_vl"])
    with pytest.raises(ZooError, match=r"cannot open image .*broken\.png"):
        ADAPTER.calibration(loaded, str(tmp_path), n_samples=1, seq_len=256, seed=0, online=False)
    (tmp_path / "questions.jsonl").write_text(json.dumps({"question": "what is it"}) + "\n")
    with pytest.raises(ZooError, match=r"questions\.jsonl line 1: question 'what is it' has no image"):
        ADAPTER.calibration(loaded, str(tmp_path), n_samples=1, seq_len=256, seed=0, online=False)
    Image.new("RGB", (16, 16)).save(tmp_path / "x.png")
    (tmp_path / "questions.jsonl").write_text(json.dumps({"image": "x.png", "question": "q"}) + "\n")
    with pytest.raises(ZooError, match="fewer than the 5 requested"):
        ADAPTER.calibration(loaded, str(tmp_path), n_samples=5, seq_len=256, seed=0, online=False)
    with pytest.raises(ZooError, match=r"cannot find the language tower of LlamaForCausalLM \(model_type 'llama'\)"):
        ADAPTER.stacks(tiny_llama())

"""`zoo export`: a GPTQ-only variant in compressed-tensors' pack-quantized layout loads with plain
transformers (and the compressed-tensors package, never this project) to the weights and logits
`zoo.load` gives; factorized variants are refused in one line; a failed export leaves nothing."""

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32
from compressed_tensors.quantization import QuantizationConfig
from transformers import AutoModelForCausalLM

import zoo
from tests.conftest import TEXT
from tests.records import make_record
from tests.test_checkpoint import random_gram
from tests.tiny_models import tiny_llama, tiny_qwen2, tiny_tokenizer
from zoo.cli import EXPORT_FORMATS, main
from zoo.compression.layer import CompotLinear
from zoo.compression.quantized import QuantLinear
from zoo.compression.report import LayerRecord
from zoo.engine import factorize
from zoo.engine.gptq import gptq
from zoo.errors import ZooError
from zoo.format import export as export_module
from zoo.format.checkpoint import compot_layers, mark_compressed, save_compressed
from zoo.format.dense_export import DENSE, export_dense
from zoo.format.export import FORMATS, MARKER, export, pack_int32

ROOT = Path(__file__).resolve().parents[1]
PROMPT = torch.tensor([[3, 17, 42, 9, 100, 5, 77, 1]])

# Loads a folder in a fresh interpreter where `import zoo` fails (as if not installed), and saves its
# logits on PROMPT and its state dict.
PLAIN = """
import sys, torch, transformers
sys.modules["zoo"] = None
folder, out = sys.argv[1:]
model = transformers.AutoModelForCausalLM.from_pretrained(folder)
tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
assert tokenizer("the quick brown fox").input_ids
with torch.no_grad():
    logits = model(torch.tensor([[3, 17, 42, 9, 100, 5, 77, 1]])).logits
torch.save({"logits": logits, "state": model.state_dict()}, out)
"""


def _cli(*args):
    return CliRunner().invoke(main, [*map(str, args)])


@pytest.fixture(scope="module", params=[(4, 32), (3, 16)], ids=["w4g32", "w3g16"])
def exported(request, tmp_path_factory):
    """A GPTQ-only tiny Llama variant (through `zoo.compress`, as a user makes one), its export, and what
    plain transformers loaded from the export in a fresh interpreter."""
    bits, group = request.param
    tmp = tmp_path_factory.mktemp(f"w{bits}")
    calibration = tmp / "calib.jsonl"
    calibration.write_text("\n".join(json.dumps({"text": TEXT * 4}) for _ in range(20)))
    model, tokenizer = tiny_llama(), tiny_tokenizer()
    quantize = {"quantize": f"gptq-w{bits}", "quantize_group_size": group}
    zoo.compress(model, tokenizer, method="gptq", **quantize, n_samples=4, seq_len=16, calibration=str(calibration))
    variant = zoo.save(model, tmp / "variant", tokenizer)
    out = tmp / "exported"
    result = _cli("export", variant, "--format", "compressed-tensors", "--out", out)
    assert result.exit_code == 0, result.output
    plain, output = _plain_load(out, tmp)
    return variant, out, plain, output + result.output


def _plain_load(folder: Path, tmp: Path) -> tuple[dict, str]:
    """What plain transformers loads from `folder` in a fresh interpreter (PLAIN), and its output."""
    env = {**os.environ, "PYTHONPATH": ""}  # nothing of this project importable
    run = subprocess.run(
        [sys.executable, "-c", PLAIN, str(folder), str(tmp / "plain.pt")],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        cwd=tmp,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return torch.load(tmp / "plain.pt"), run.stdout + run.stderr


def test_plain_transformers_gives_zoo_loads_logits_exactly(exported):
    """Dequantized on CPU both ways, in the variant's bfloat16: (q - zero) is a small integer, exact in
    bfloat16, and its product with a bfloat16 scale is rounded once either way, so the weights are
    bit-identical and so are the logits (tolerance 0)."""
    variant, _, plain, _ = exported
    with torch.no_grad():
        ours = zoo.load(variant)(PROMPT).logits
    assert plain["logits"].dtype == ours.dtype == torch.bfloat16
    assert torch.equal(plain["logits"], ours)


def test_every_dequantized_weight_equals_ours_exactly(exported):
    variant, _, plain, _ = exported
    stored = zoo.load(variant, inference=False)
    layers = compot_layers(stored)
    assert layers and all(isinstance(layer, QuantLinear) for layer in layers.values())
    for name, layer in layers.items():
        assert torch.equal(plain["state"][f"{name}.weight"], layer.dequantized_weight()), name
    loaded = zoo.load(variant).state_dict()  # and every other tensor as zoo.load has it
    assert plain["state"].keys() == loaded.keys()
    assert all(torch.equal(plain["state"][k], loaded[k]) for k in loaded)


def test_the_folder_is_the_standard_layout_with_no_trace_of_our_format(exported):
    variant, out, _, output = exported
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llama" and "auto_map" not in config and "base_model_type" not in config
    quantization = config["quantization_config"]
    parsed = QuantizationConfig.model_validate({k: v for k, v in quantization.items() if k != "dequantize"})
    assert parsed.format == "pack-quantized" and parsed.quantization_status == "compressed"
    (group,) = parsed.config_groups.values()
    layers = json.loads((variant / "config.json").read_text())["quantization_config"]["layers"]
    assert sorted(group.targets) == sorted(layers)
    entry = next(iter(layers.values()))
    weights = group.weights
    assert (weights.num_bits, weights.group_size) == (entry["bits"], entry["group_size"])
    assert weights.type == "int" and weights.strategy == "group" and weights.symmetric is False
    files = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "README.md", MARKER} <= files
    assert not files & {"configuration_compot.py", "compot_record.json"}
    assert "vllm serve" in (out / "README.md").read_text()
    assert "MISSING" not in output and "UNEXPECTED" not in output and "Unknown quantization" not in output
    bits = entry["bits"]
    assert ("vLLM refuses" in output) == (bits not in (4, 8))  # vLLM reads zero points at 4 and 8 bits only


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_packing_is_compressed_tensors_own(bits):
    """Weights packed along a row and zero points along a column, as compressed-tensors packs them
    (its integers are signed, stored with an offset of 2**(bits-1): our unsigned q)."""
    g = np.random.default_rng(bits)
    values = g.integers(0, 2**bits, size=(7, 45), dtype=np.uint8)
    signed = torch.from_numpy((values.astype(np.int16) - 2 ** (bits - 1)).astype(np.int8))
    assert torch.equal(torch.from_numpy(pack_int32(values, bits)), pack_to_int32(signed, bits))
    assert torch.equal(torch.from_numpy(pack_int32(values.T, bits).T.copy()), pack_to_int32(signed, bits, packed_dim=0))


def _hand_built(tmp: Path, group_size: int) -> tuple[torch.nn.Module, Path]:
    """A tiny Qwen2 (biased q_projs, untied head) whose q_projs are GPTQ-quantized with `group_size` (48: a
    shorter last group over 64 inputs, as older versions wrote), saved as a variant."""
    model = tiny_qwen2()
    for i in range(2):
        name = f"model.layers.{i}.self_attn.q_proj"
        linear = model.get_submodule(name)
        quantized, _ = gptq(linear.weight.detach(), torch.eye(64), 4, group_size, scale_dtype=torch.bfloat16)
        model.set_submodule(name, QuantLinear.from_quantized(quantized, linear.bias))
    model = model.to(torch.bfloat16)
    mark_compressed(model)
    rows = tuple(
        LayerRecord(name, (64, 64), "gptq", 0.7, 0, 0, "bfloat16", m.stored_bits(), m.stored_bits(), 0, 0, 0, 0)
        for name, m in compot_layers(model).items()
    )
    out = tmp / "variant"
    save_compressed(model, out, make_record(model, layers=rows), extra_files=tiny_tokenizer().save_pretrained)
    return model, out


def test_a_shorter_last_group_exports_as_the_same_grid_with_a_dividing_group_size(tmp_path):
    model, variant = _hand_built(tmp_path, 48)
    result = export(variant, tmp_path / "out")
    assert result.schemes == ((4, 16),)  # gcd(48, 64): each group of 48 split in three
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    for name, layer in compot_layers(model).items():
        assert torch.equal(loaded.get_submodule(name).weight, layer.dequantized_weight())
        assert torch.equal(loaded.get_submodule(name).bias, layer.bias)
    with torch.no_grad():
        assert torch.equal(loaded(PROMPT).logits, zoo.load(variant)(PROMPT).logits)


def test_a_factorized_variant_is_refused_in_one_line(tmp_path):
    model = tiny_llama()
    g = torch.Generator().manual_seed(0)
    name = "model.layers.0.self_attn.q_proj"
    f = factorize(model.get_submodule(name).weight.detach(), random_gram(64, g), cr=0.3, iters=2, name=name)
    model.set_submodule(name, CompotLinear.from_factorization(f, None))
    mark_compressed(model)
    save_compressed(model, tmp_path / "compot", make_record(model))
    result = _cli("export", tmp_path / "compot", "--out", tmp_path / "out")
    assert result.exit_code == 1
    (line,) = result.output.strip().splitlines()
    assert "is factorized (COMPOT): no standard runtime format exists" in line
    assert "zoo.load(path)" in line and "`import zoo`" in line and "pip install compot-zoo" in line
    assert not (tmp_path / "out").exists()


def test_a_failed_export_leaves_nothing_and_keeps_the_previous_one(tmp_path, monkeypatch):
    _, variant = _hand_built(tmp_path, 32)
    out = tmp_path / "out"
    export(variant, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def disk_full(tensors, path, metadata=None):
        Path(path).write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(export_module, "save_file", disk_full)
    for target, overwrite in ((tmp_path / "fresh", False), (out, True)):
        with pytest.raises(ZooError, match="No space left on device; free some space"):
            export(variant, target, overwrite=overwrite)
    assert not (tmp_path / "fresh").exists()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_an_existing_folder_is_replaced_only_when_asked_and_only_if_an_export(tmp_path):
    _, variant = _hand_built(tmp_path, 32)
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "notes.txt").write_text("mine")
    with pytest.raises(ZooError, match="exists; pass --overwrite"):
        export(variant, tmp_path / "home")
    with pytest.raises(ZooError, match="not empty and holds no compot_export.json"):
        export(variant, tmp_path / "home", overwrite=True)
    assert (tmp_path / "home" / "notes.txt").read_text() == "mine"


def test_the_cli_offers_the_formats_export_writes():
    assert EXPORT_FORMATS == (*FORMATS, DENSE)


def test_any_variant_exports_dense_and_plain_transformers_reads_it_as_zoo_load_runs_it(tmp_path):
    """A COMPOT variant (which has no standard compressed format) written dense: plain transformers, no
    project importable, loads it into the base architecture with the logits zoo.load gives on CPU,
    where every layer multiplies from the same rounded product (the dense layout) or from its
    factors (the rounding differs); the file is the base's size, and the card says the savings are gone."""
    base = tmp_path / "base"
    model, tokenizer = tiny_llama(), tiny_tokenizer()
    model.save_pretrained(base)
    calibration = tmp_path / "calib.jsonl"
    calibration.write_text("\n".join(json.dumps({"text": TEXT * 4}) for _ in range(20)))
    zoo.compress(model, tokenizer, cr=0.3, iters=3, heal=0, n_samples=4, seq_len=16, calibration=str(calibration))
    variant = zoo.save(model, tmp_path / "variant", tokenizer)
    out = tmp_path / "dense"
    result = _cli("export", variant, "--format", "dense", "--out", out)
    assert result.exit_code == 0, result.output
    assert "savings are gone" in result.output and "savings do not survive" in (out / "README.md").read_text()
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llama" and not {"quantization_config", "auto_map", "base_model_type"} & set(config)
    plain, _ = _plain_load(out, tmp_path)
    stored = zoo.load(variant, inference=False)
    for name, layer in compot_layers(stored).items():
        product = (layer.dense_codes().float() @ layer.dictionary.float()).to(layer.storage_dtype)
        assert torch.equal(plain["state"][f"{name}.weight"], product.to(plain["state"][f"{name}.weight"].dtype))
    with torch.no_grad():
        ours = zoo.load(variant)(PROMPT).logits
    assert torch.allclose(plain["logits"].float(), ours.float(), atol=0.05 * ours.float().std().item())
    size = (out / "model.safetensors").stat().st_size
    assert size > (variant / "model.safetensors").stat().st_size  # no savings left
    with pytest.raises(ZooError, match="no compot quantization_config"):
        export_dense(base, tmp_path / "again")  # a plain model is no variant

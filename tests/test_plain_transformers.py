"""A variant loaded by transformers without this project never gives random weights: it either
loads exactly as `zoo.load` does or stops with an error that names the fix (zoo.format.variant_config)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, WhisperConfig, WhisperForConditionalGeneration

import zoo
from tests.records import make_record
from tests.test_checkpoint import PROMPT, compress, random_gram
from tests.tiny_models import tiny_llama, tiny_tokenizer
from tests.tiny_vlm import tiny_vlm
from zoo.compression.layer import CompotLinear
from zoo.engine import factorize
from zoo.engine.factorization import intra_op_threads
from zoo.errors import ZooError
from zoo.format.checkpoint import save_compressed

ROOT = Path(__file__).resolve().parents[1]
INPUTS = "inputs.pt"

# Loads the variant in a fresh interpreter that never imports zoo ("blocked": cannot, as if not
# installed) with an Auto class or `pipeline`, and saves its logits on the variant's inputs, or
# prints the error it raised.
SCRIPT = """
import sys, torch, transformers
torch.set_num_threads(1)  # as the test compares it: one thread sums in one order
variant, how, trust, blocked, out = sys.argv[1:]
if blocked == "1":
    sys.modules["zoo"] = None
kwargs = {"trust_remote_code": True} if trust == "1" else {}
try:
    if how == "pipeline":
        model = transformers.pipeline("text-generation", model=variant, **kwargs).model
    else:
        model = getattr(transformers, how).from_pretrained(variant, **kwargs)
except Exception as exc:
    print(f"RAISED {type(exc).__name__}: {exc}")
    sys.exit(3)
assert "zoo" in sys.modules  # imported by the variant's own code, never by this script
with torch.no_grad():
    torch.save(model(**torch.load(f"{variant}/../inputs.pt")).logits, out)
"""


def _tiny_whisper() -> nn.Module:
    config = WhisperConfig(
        d_model=64, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4, decoder_attention_heads=4
    )
    torch.manual_seed(0)
    return WhisperForConditionalGeneration(config).eval()


def _with_q_proj_compressed(model: nn.Module) -> nn.Module:
    """Every q_proj factorized: any compressed layer makes the base architecture load wrong without the project."""
    g = torch.Generator().manual_seed(0)
    targets = [(n, m) for n, m in model.named_modules() if n.endswith("q_proj") and isinstance(m, nn.Linear)]
    for name, linear in targets:
        f = factorize(linear.weight.detach(), random_gram(linear.in_features, g), cr=0.3, iters=2, name=name)
        model.set_submodule(name, CompotLinear.from_factorization(f, linear.bias))
    return model


# modality -> (the compressed model, the Auto class that loads it, inputs for one forward)
MODALITIES = {
    "llm": (lambda: compress(tiny_llama)[0], "AutoModelForCausalLM", {"input_ids": PROMPT}),
    "whisper": (
        lambda: _with_q_proj_compressed(_tiny_whisper()),
        "AutoModelForSpeechSeq2Seq",
        {"input_features": torch.randn(1, 80, 3000), "decoder_input_ids": torch.tensor([[50257, 50362, 11, 12]])},
    ),
    "vlm": (lambda: _with_q_proj_compressed(tiny_vlm()), "AutoModelForImageTextToText", {"input_ids": PROMPT % 50}),
}


@pytest.fixture(scope="module", params=list(MODALITIES))
def variant(request, tmp_path_factory):
    """A saved variant of the modality (an LLM with its tokenizer, for pipeline()), its Auto class, its inputs."""
    make, auto, inputs = MODALITIES[request.param]
    model = make()
    out = tmp_path_factory.mktemp(request.param) / "variant"
    extra = tiny_tokenizer().save_pretrained if request.param == "llm" else None
    save_compressed(model, out, make_record(model), extra_files=extra)
    torch.save(inputs, out.parent / INPUTS)
    return out, auto, inputs


def load_without_zoo(variant: Path, how: str, trust: bool, blocked: bool = False) -> subprocess.CompletedProcess:
    out = variant.parent / f"logits-{how}-{trust}-{blocked}.pt"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_MODULES_CACHE": str(variant.parent / "modules")}
    argv = [str(variant), how, str(int(trust)), str(int(blocked)), str(out)]
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, *argv], env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True
    )


def test_plain_transformers_refuses_until_trusted(variant):
    """What the Hub's "Use this model" snippet runs: no random weights, a request for the variant's code."""
    folder, auto, _ = variant
    for how in (auto, "pipeline") if auto == "AutoModelForCausalLM" else (auto,):
        run = load_without_zoo(folder, how, trust=False)
        assert run.returncode == 3, run.stdout + run.stderr
        assert "RAISED ValueError" in run.stdout and "trust_remote_code=True" in run.stdout


def test_trusted_code_without_the_project_names_the_install(variant):
    folder, auto, _ = variant
    for how in (auto, "pipeline") if auto == "AutoModelForCausalLM" else (auto,):
        run = load_without_zoo(folder, how, trust=True, blocked=True)
        assert run.returncode == 3, run.stdout + run.stderr
        assert "RAISED ImportError" in run.stdout
        assert "pip install compot-zoo" in run.stdout and "import zoo" in run.stdout and "zoo.load" in run.stdout


def test_trusted_code_with_the_project_installed_loads_what_zoo_loads(variant):
    folder, auto, inputs = variant
    run = load_without_zoo(folder, auto, trust=True)
    assert run.returncode == 0, run.stdout + run.stderr
    logits = torch.load(folder.parent / f"logits-{auto}-True-False.pt")
    with torch.no_grad(), intra_op_threads(1):
        assert torch.equal(logits, zoo.load(folder)(**inputs).logits)


def test_config_json_is_typed_compot_with_the_base_type_kept(variant):
    folder, auto, _ = variant
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "compot" and config["base_model_type"] in ("llama", "whisper", "qwen2_vl")
    assert config["auto_map"] == {"AutoConfig": "configuration_compot.CompotConfig"}
    assert (folder / "configuration_compot.py").is_file()
    import transformers

    loaded = getattr(transformers, auto).from_pretrained(folder)  # with `import zoo`: the base's own config
    assert loaded.config.model_type == config["base_model_type"]


def test_a_config_that_lost_its_quantization_config_is_refused_with_the_project(tmp_path):
    model = compress(tiny_llama)[0]
    broken = tmp_path / "broken"
    save_compressed(model, broken, make_record(model))
    config = json.loads((broken / "config.json").read_text())
    del config["quantization_config"]
    (broken / "config.json").write_text(json.dumps(config))
    for load in (AutoModelForCausalLM.from_pretrained, zoo.load):
        with pytest.raises(ZooError, match=r"broken/config\.json is a COMPOT-compressed variant, .* is missing"):
            load(broken)


def test_the_base_architecture_s_own_class_stops_instead_of_loading_random_weights(variant):
    """`LlamaForCausalLM.from_pretrained(variant)` reads any config.json; the checkpoint's empty guard
    `weight` then stops it on its shape, where it would fill the compressed projections at random."""
    folder, _, _ = variant
    architecture = json.loads((folder / "config.json").read_text())["architectures"][0]
    run = load_without_zoo(folder, architecture, trust=False, blocked=True)
    assert run.returncode == 3, run.stdout + run.stderr
    assert "RAISED RuntimeError" in run.stdout and "ignore_mismatched_sizes" in run.stdout
    assert "MISMATCH" in run.stdout + run.stderr


def test_a_compressed_model_s_own_save_pretrained_writes_the_guard_too(tmp_path):
    """zoo.compress, then the model's own save_pretrained (which writes the base's model_type): plain
    transformers still stops on the guard, with the project it loads the same model."""
    model = compress(tiny_llama)[0]
    save_compressed(model, tmp_path / "saved", make_record(model))
    reloaded = zoo.load(tmp_path / "saved", inference=False)
    folder = tmp_path / "variant"
    reloaded.save_pretrained(folder)
    torch.save({"input_ids": PROMPT}, tmp_path / INPUTS)
    run = load_without_zoo(folder, "AutoModelForCausalLM", trust=False, blocked=True)
    assert run.returncode == 3, run.stdout + run.stderr
    assert "RAISED RuntimeError" in run.stdout and "ignore_mismatched_sizes" in run.stdout
    served = zoo.load(tmp_path / "saved")  # inference layouts hold no factors: nothing to save
    with torch.no_grad():
        assert torch.equal(AutoModelForCausalLM.from_pretrained(folder)(PROMPT).logits, served(PROMPT).logits)
    with pytest.raises(ValueError, match="not serializable"):
        served.save_pretrained(tmp_path / "again")

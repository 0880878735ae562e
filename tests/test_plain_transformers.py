"""A variant loaded by transformers without this project never gives random weights: it either
loads exactly as `zoo.load` does or stops with an error that names the fix (zoo.format.quantizer)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

import zoo
from tests.records import make_record
from tests.test_checkpoint import PROMPT, compress
from tests.tiny_models import tiny_llama, tiny_tokenizer
from zoo.errors import ZooError
from zoo.format.checkpoint import save_compressed

ROOT = Path(__file__).resolve().parents[1]

# Loads the variant in a fresh interpreter that never imports zoo ("blocked": cannot, as if not
# installed) and saves the logits, or prints the error it raised.
SCRIPT = """
import sys, torch
variant, how, trust, blocked, out = sys.argv[1:]
if blocked == "1":
    sys.modules["zoo"] = None
from transformers import AutoModelForCausalLM, pipeline
kwargs = {"trust_remote_code": True} if trust == "1" else {}
try:
    if how == "pipeline":
        model = pipeline("text-generation", model=variant, **kwargs).model
    else:
        model = AutoModelForCausalLM.from_pretrained(variant, **kwargs)
except Exception as exc:
    print(f"RAISED {type(exc).__name__}: {exc}")
    sys.exit(3)
assert "zoo" in sys.modules  # imported by the variant's own code, never by this script
torch.save(model(torch.tensor({prompt})).logits, out)
""".replace("{prompt}", str(PROMPT.tolist()))


@pytest.fixture(scope="module")
def variant(tmp_path_factory):
    model, _ = compress(tiny_llama)
    out = tmp_path_factory.mktemp("plain") / "variant"
    save_compressed(model, out, make_record(model), extra_files=tiny_tokenizer().save_pretrained)
    return out


def load_without_zoo(variant: Path, how: str, trust: bool, blocked: bool = False) -> subprocess.CompletedProcess:
    out = variant.parent / f"logits-{how}-{trust}-{blocked}.pt"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_MODULES_CACHE": str(variant.parent / "modules")}
    argv = [str(variant), how, str(int(trust)), str(int(blocked)), str(out)]
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, *argv], env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True
    )


@pytest.mark.parametrize("how", ["from_pretrained", "pipeline"])
def test_plain_transformers_refuses_until_trusted(variant, how):
    """What the Hub's "Use this model" snippet runs: no random weights, a request for the variant's code."""
    run = load_without_zoo(variant, how, trust=False)
    assert run.returncode == 3, run.stdout + run.stderr
    assert "RAISED ValueError" in run.stdout and "trust_remote_code=True" in run.stdout


@pytest.mark.parametrize("how", ["from_pretrained", "pipeline"])
def test_trusted_code_without_the_project_names_the_install(variant, how):
    run = load_without_zoo(variant, how, trust=True, blocked=True)
    assert run.returncode == 3, run.stdout + run.stderr
    assert "RAISED ImportError" in run.stdout
    assert "pip install compot-zoo" in run.stdout and "import zoo" in run.stdout and "zoo.load" in run.stdout


def test_trusted_code_with_the_project_installed_loads_what_zoo_loads(variant):
    run = load_without_zoo(variant, "from_pretrained", trust=True)
    assert run.returncode == 0, run.stdout + run.stderr
    logits = torch.load(variant.parent / "logits-from_pretrained-True-False.pt")
    assert torch.equal(logits, zoo.load(variant)(PROMPT).logits)
    assert torch.equal(logits, AutoModelForCausalLM.from_pretrained(variant)(PROMPT).logits)


def test_config_json_is_typed_compot_with_the_base_type_kept(variant):
    config = json.loads((variant / "config.json").read_text())
    assert (config["model_type"], config["base_model_type"]) == ("compot", "llama")
    assert config["auto_map"] == {"AutoConfig": "configuration_compot.CompotConfig"}
    assert (variant / "configuration_compot.py").is_file()
    assert AutoModelForCausalLM.from_pretrained(variant).config.model_type == "llama"  # with `import zoo`


def test_a_config_that_lost_its_quantization_config_is_refused_with_the_project(variant, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in variant.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    config = json.loads((broken / "config.json").read_text())
    del config["quantization_config"]
    (broken / "config.json").write_text(json.dumps(config))
    for load in (AutoModelForCausalLM.from_pretrained, zoo.load):
        with pytest.raises(ZooError, match=r"broken/config\.json is a COMPOT-compressed variant, .* is missing"):
            load(broken)

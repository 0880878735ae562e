"""A new compression method is one object in one file: this toy, registered here and nowhere else,
runs through compress -> save -> load -> publish -> site like the built-in ones."""

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open

import zoo
from tests.conftest import TEXT, TINY_EVAL, TINY_RUN
from tests.tiny_models import saved_with_texts, tiny_tokenizer
from zoo.cli import main
from zoo.format.record import read_record
from zoo.methods import registry
from zoo.methods.svd_llm import SVD_LLM
from zoo.publish.publishers import LocalRegistry
from zoo.publish.site import render_site


def half_rank(m: int, n: int, cr: float, ks_ratio: float) -> tuple[int, int] | None:
    """Half the rank a low-rank pair could afford at `cr` (SVD-LLM's shape rule)."""
    r = (SVD_LLM.shape(m, n, cr, ks_ratio) or (0, 0))[0] // 2
    return (r, r) if r >= 1 else None


TOY = registry.Method(
    name="toy-half-rank",
    display_name="Toy half-rank",
    summary="a low-rank pair at half the rank the CR allows",
    solver="truncated-svd",
    shape=half_rank,
    max_atoms=min,
    static=True,
)


@pytest.fixture
def toy():
    registry.register(TOY)
    yield TOY
    del registry._METHODS[TOY.name]


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.arange(12).reshape(1, 12)).logits


def test_a_method_registered_in_one_place_compresses_saves_loads_and_publishes(toy, tmp_path):
    base, texts = saved_with_texts(tmp_path, "tiny-llama", tiny_tokenizer(), TEXT * 4, 20)
    out = tmp_path / "tiny-toy"
    args = [*TINY_RUN, "--calibration", texts, "--method", toy.name, "--static", *TINY_EVAL]
    command = ["compress", base, *args, "--out", out]
    result = CliRunner().invoke(main, [str(a) for a in command], catch_exceptions=False)
    assert result.exit_code == 0, result.output

    record = read_record(out)
    layers = [r for r in record.layers if r.method != "dense"]
    assert layers and {r.method for r in layers} == {toy.name}
    with safe_open(out / "model.safetensors", framework="pt") as f:
        for r in layers:
            out_features, in_features = r.shape
            full = half_rank(in_features, out_features, 0.3, 2.0)[0] * 2
            assert r.k == r.s and full - 1 <= 2 * r.k <= full  # the toy's own shape rule, not SVD-LLM's
            assert tuple(f.get_slice(f"{r.name}.dictionary").get_shape()) == (r.k, in_features)
            assert tuple(f.get_slice(f"{r.name}.code_values").get_shape()) == (out_features, r.k)
            assert r.stored_bits == r.eq11_bits == toy.bits(in_features, out_features, r.k, r.s)
            assert f"{r.name}.code_mask" not in f.keys()

    loaded = zoo.load(out, inference=False)
    assert loaded.get_submodule(layers[0].name).method == toy.name

    published = LocalRegistry(tmp_path / "registry", "zoo").publish(out, "tiny-toy")  # file checks included
    assert published.scorecard.method == toy.name
    republished = zoo.load(tmp_path / "registry" / "zoo" / "tiny-toy", inference=False)
    assert torch.equal(_logits(republished), _logits(loaded))
    render_site(LocalRegistry(tmp_path / "registry", "zoo").published(), tmp_path / "site")
    pages = "".join(p.read_text() for p in (tmp_path / "site").rglob("*.html"))
    assert "Toy half-rank" in pages

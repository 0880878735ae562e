"""Healing under a fixed support: what it must change (block outputs) and what it must not (the
support, k, s, the stored bytes' layout, pruned codes at zero through GPTQ)."""

import copy

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from tests.conftest import TINY_RUN
from tests.planned import tiny_llama_plan
from tests.tiny_models import tiny_llama, token_batches
from zoo.cli import main
from zoo.compression.apply import working_copy
from zoo.compression.grams import block_grams, capture_block_inputs, replay
from zoo.compression.healing import (
    HealedLinear,
    SharedSamples,
    block_error,
    heal_block,
    output_units,
    relative_adam,
    rows,
)
from zoo.engine import factorize_many
from zoo.format.checkpoint import WEIGHTS, load_compressed

GROUPS = [
    ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
    ["self_attn.o_proj"],
    ["mlp.gate_proj", "mlp.up_proj"],
    ["mlp.down_proj"],
]


def _student(block, factors):
    student = copy.deepcopy(block)
    for name, f in factors.items():
        student.set_submodule(name, HealedLinear.of(f, block.get_submodule(name).bias))
    return student


@pytest.fixture(scope="module")
def fitted():
    """Block 1 of a tiny Llama, its inputs (48 batches to heal on, 16 held out), targets, and its
    factors. Fewer samples and the random block over-fits: healing then barely helps held-out inputs."""
    model = tiny_llama()
    batches = [{"input_ids": b["input_ids"].repeat(2, 1), "use_cache": False} for b in token_batches(64, 64)]
    inputs = capture_block_inputs(model, model.model.layers[0], batches)
    inputs = replay(working_copy(model.model.layers[0], torch.device("cpu")), inputs)
    block = working_copy(model.model.layers[1], torch.device("cpu"))
    train, held = inputs[:48], inputs[48:]
    stats, targets = block_grams(block, GROUPS, train)
    jobs = {n: (block.get_submodule(n).weight.detach(), stats[g[0]].gram, 0.4) for g in GROUPS for n in g}
    factors = factorize_many(jobs, iters=5)
    return block, train, targets, held, replay(block, held), factors


def test_healing_lowers_the_block_output_error_on_held_out_inputs(fitted):
    block, train, targets, held, held_targets, factors = fitted
    healed = heal_block(block, factors, SharedSamples(train, targets), steps=60, lr=1e-2)
    before = block_error(_student(block, factors), held, held_targets)
    after = block_error(_student(block, healed), held, held_targets)
    assert after < 0.85 * before, (before, after)
    # the same step count on held-out data it never saw, so this is not the training loss
    assert block_error(_student(block, healed), train, targets) < block_error(_student(block, factors), train, targets)


def test_healing_keeps_the_support_k_and_s_and_every_pruned_code_at_zero(fitted):
    block, train, targets, _, _, factors = fitted
    healed = heal_block(block, factors, SharedSamples(train, targets), steps=20, lr=3e-3)
    for name, f in factors.items():
        h = healed[name]
        assert (h.k, h.s, h.method) == (f.k, f.s, f.method)
        assert torch.equal(h.support, f.support)
        assert bool((h.codes[~f.support] == 0).all())
        assert not torch.equal(h.codes, f.codes) and not torch.equal(h.dictionary, f.dictionary)


def test_healing_that_raises_the_block_s_error_is_not_kept(fitted, caplog):
    """Steps far too large push the block off its outputs: the factors stay as factorized, and the
    run says so, naming the block."""
    block, train, targets, _, _, factors = fitted
    with caplog.at_level("WARNING"):
        kept = heal_block(block, factors, SharedSamples(train, targets), steps=10, lr=0.5, desc="heal layers.1")
    assert kept is factors
    assert "heal layers.1: healing at step 0.5 raised the block's output error" in caplog.text
    assert "healing again at step 0.05" in caplog.text and "kept as factorized" in caplog.text


def test_healing_that_raises_the_error_starts_over_at_a_tenth_of_the_step(fitted, caplog):
    """What it keeps then is exactly what healing at the smaller step gives."""
    block, train, targets, _, _, factors = fitted
    with caplog.at_level("WARNING"):
        retried = heal_block(block, factors, SharedSamples(train, targets), steps=10, lr=0.1)
    assert "healing at step 0.1 raised" in caplog.text and "healing again at step 0.01" in caplog.text
    assert retried is not factors
    direct = heal_block(block, factors, SharedSamples(train, targets), steps=10, lr=0.01)
    assert all(torch.equal(retried[n].codes, direct[n].codes) for n in factors)


def test_zero_steps_leave_the_factors_as_they_are(fitted):
    block, train, targets, _, _, factors = fitted
    assert heal_block(block, factors, SharedSamples(train, targets), steps=0, lr=3e-3) is factors


def test_healing_is_deterministic(fitted):
    block, train, targets, _, _, factors = fitted
    a = heal_block(block, factors, SharedSamples(train, targets), steps=5, lr=3e-3, seed=7)
    b = heal_block(block, factors, SharedSamples(train, targets), steps=5, lr=3e-3, seed=7)
    assert all(torch.equal(a[n].dictionary, b[n].dictionary) and torch.equal(a[n].codes, b[n].codes) for n in a)


def test_rows_cut_the_batch_and_keep_what_samples_share(fitted):
    _, train, _, _, _, _ = fitted
    item = train[0]
    hidden = item.args[0] if item.args else item.kwargs["hidden_states"]
    cut = rows(item)
    assert len(cut) == hidden.shape[0] == 2
    for i, row in enumerate(cut):
        got = row.args[0] if row.args else row.kwargs["hidden_states"]
        assert torch.equal(got, hidden[i : i + 1])
        cos, _ = row.kwargs["position_embeddings"]
        assert torch.equal(cos, item.kwargs["position_embeddings"][0])  # shared by every sample, kept whole


def _compress(model_dir, text_file, out, *extra):
    args = ["compress", model_dir, *TINY_RUN, "--calibration", text_file, "--iters", 3, "--out", out, *extra]
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_a_healed_checkpoint_stores_the_same_tensors_and_mask_as_the_unhealed(tmp_path, model_dir, text_file):
    plain, healed = tmp_path / "plain", tmp_path / "healed"
    assert _compress(model_dir, text_file, plain, "--heal", 0).exit_code == 0
    assert _compress(model_dir, text_file, healed, "--heal", 8).exit_code == 0
    a, b = load_file(plain / WEIGHTS), load_file(healed / WEIGHTS)
    assert {k: (v.shape, v.dtype) for k, v in a.items()} == {k: (v.shape, v.dtype) for k, v in b.items()}
    assert (plain / WEIGHTS).stat().st_size == (healed / WEIGHTS).stat().st_size
    masks = [k for k in a if k.endswith("code_mask")]
    assert masks and all(torch.equal(a[k], b[k]) for k in masks)  # the support as factorized
    assert any(not torch.equal(a[k], b[k]) for k in a if k.endswith("dictionary"))  # the factors healed


def test_gptq_after_healing_keeps_pruned_codes_at_zero(tmp_path, model_dir, text_file):
    out = tmp_path / "q"
    extra = ("--heal", 6, "--quantize", "gptq-w4", "--quantize-group-size", 16)
    assert _compress(model_dir, text_file, out, *extra).exit_code == 0
    model = load_compressed(out, inference=False)
    layers = [m for m in model.modules() if type(m).__name__ == "CompotLinear" and m.code_mask is not None]
    assert layers
    for layer in layers:
        assert layer.quantized
        codes = layer._unpacked().dense_codes()
        mask = torch.cat([layer._mask_rows(a, b) for a, b in layer._chunks()])
        assert bool((codes[~mask] == 0).all()) and bool((mask.sum(1) == layer.s).all())


def test_a_negative_step_count_is_refused_before_any_weights_load(tmp_path, model_dir, text_file, monkeypatch):
    import zoo.pipeline

    monkeypatch.setattr(zoo.pipeline, "plan", lambda *a, **k: pytest.fail("planned with a bad setting"))
    result = CliRunner().invoke(main, ["compress", str(model_dir), "--heal", "-5", "--out", str(tmp_path / "x")])
    assert result.exit_code != 0 and "heal -5 must be at least 0" in result.output


def test_svd_llm_factors_heal_too(fitted):
    block, train, targets, held, held_targets, _ = fitted
    stats, _ = block_grams(block, GROUPS, train)
    jobs = {n: (block.get_submodule(n).weight.detach(), stats[g[0]].gram, 0.4) for g in GROUPS for n in g}
    factors = factorize_many(jobs, method="svd-llm")
    healed = heal_block(block, factors, SharedSamples(train, targets), steps=60, lr=1e-2)
    assert all(h.support is None and h.k == factors[n].k for n, h in healed.items())
    before = block_error(_student(block, factors), held, held_targets)
    assert block_error(_student(block, healed), held, held_targets) < 0.9 * before


def test_the_plan_counts_healing_in_time_and_memory():
    plain, healed = tiny_llama_plan(8, heal_steps=0), tiny_llama_plan(8, heal_steps=200)
    assert healed.device_bytes > plain.device_bytes and healed.host_bytes > plain.host_bytes
    assert healed.seconds > plain.seconds


def test_a_channel_the_calibration_hardly_reaches_moves_its_row_no_further_than_the_floor_allows():
    """Whisper-base's decoder has input channels at 1e-5 of the mean: trained in those units, their
    dictionary rows grew several-fold, unseen on the calibration data, and 4-bit GPTQ then lost the rest
    of their groups. Adam moves an element at most about its step a step, so a row trained in a scale
    of at least 1% of the mean's moves at most 100 times as far as a row in the mean's scale."""
    inputs, dictionary, codes, support = _layer_parts(torch.Generator().manual_seed(0))
    inputs[:, 0] *= 1e-6
    steps, lr = 20, 1e-2
    layer = _heal(inputs, dictionary, codes, support, inputs.double().mT @ inputs.double(), steps, lr)
    moved = (layer.factors()[0] - dictionary).abs().amax(1)
    bound = steps * lr * layer.dictionary.detach().pow(2).mean().sqrt()  # for a row in the mean's scale
    assert moved[1:].max() <= 1.1 * bound / layer.inputs[1:].min()
    assert moved[0] <= 1.1 * bound * 100


def _trained(inputs: torch.Tensor, dictionary, codes, support, gram, steps: int = 20) -> torch.Tensor:
    """A layer's outputs on `inputs` after `steps` of healing's Adam towards fixed targets."""
    return _heal(inputs, dictionary, codes, support, gram, steps, 1e-2)(inputs).detach()


def _heal(inputs: torch.Tensor, dictionary, codes, support, gram, steps: int, lr: float) -> HealedLinear:
    """A layer after `steps` of healing's Adam towards its own outputs on `inputs`, plus noise."""
    layer = HealedLinear(dictionary, codes, support, None, None if gram is None else output_units(dictionary, gram))
    noise = torch.randn(inputs.shape[0], codes.shape[1], generator=torch.Generator().manual_seed(1))
    target = layer(inputs).detach() + 0.1 * noise
    optimizer = relative_adam([layer], lr)
    for _ in range(steps):
        loss = (layer(inputs) - target).pow(2).sum() / target.pow(2).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return layer


def _layer_parts(g: torch.Generator, width: int = 16, k: int = 8, out: int = 12):
    inputs = torch.randn(256, width, generator=g)
    dictionary = torch.linalg.qr(torch.randn(width, k, generator=g, dtype=torch.float64)).Q.float()
    codes = torch.randn(k, out, generator=g)
    return inputs, dictionary, codes, torch.rand(k, out, generator=g) > 0.5


def test_trained_in_its_output_s_units_a_layer_computes_the_same_and_gives_back_its_factors():
    inputs, dictionary, codes, support = _layer_parts(torch.Generator().manual_seed(0))
    inputs = inputs * torch.logspace(-1, 1, inputs.shape[1])  # channels from 0.1 to 10
    gram = inputs.double().mT @ inputs.double()
    plain = HealedLinear(dictionary, codes, support, None)
    scaled = HealedLinear(dictionary, codes, support, None, output_units(dictionary, gram))
    assert torch.allclose(scaled(inputs), plain(inputs), rtol=1e-4, atol=1e-4)
    trained_dictionary, trained_codes = scaled.factors()
    assert torch.allclose(trained_dictionary, dictionary, atol=1e-6) and torch.equal(trained_codes == 0, ~support)


def test_healing_does_not_depend_on_how_loud_each_input_channel_is():
    """Louder channels with quieter dictionary rows are the same layer (Gemma-3 and Qwen2.5 have
    such channels): trained in the output's units it heals alike; trained raw, Adam's same-size
    steps move the loud channels' contributions far more."""
    inputs, dictionary, codes, support = _layer_parts(torch.Generator().manual_seed(0))
    loudness = torch.logspace(-1, 1, inputs.shape[1])  # 100 times apart, none below UNIT_FLOOR
    loud = inputs * loudness
    gram, loud_gram = inputs.double().mT @ inputs.double(), loud.double().mT @ loud.double()
    quiet_rows = dictionary / loudness[:, None]
    healed = _trained(inputs, dictionary, codes, support, gram)
    assert torch.allclose(_trained(loud, quiet_rows, codes, support, loud_gram), healed, rtol=1e-3, atol=1e-3)
    assert not torch.allclose(_trained(loud, quiet_rows, codes, support, None), healed, rtol=1e-2, atol=1e-2)

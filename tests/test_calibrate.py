"""Block-wise Gram collection equals Grams taken from one ordinary forward pass."""

import copy

import pytest
import torch

from tests.tiny_models import tiny_calibration, tiny_gemma3, tiny_llama, tiny_qwen2, token_batches
from zoo.compression import apply
from zoo.compression.apply import compress_model
from zoo.compression.config import CompressionConfig
from zoo.compression.grams import block_grams, capture_block_inputs, capture_kind_inputs, dressed, hidden_of, replay
from zoo.compression.targets import CalibrationData
from zoo.errors import ZooError
from zoo.modalities.decoder_llm import ADAPTER


def _reference_grams(model, batches, names):
    grams = {n: 0 for n in names}
    tokens = {n: 0 for n in names}
    hooks = []
    for n in names:

        def hook(_m, args, _o, n=n):
            x = args[0].reshape(-1, args[0].shape[-1]).double()
            grams[n] = grams[n] + x.T @ x
            tokens[n] += x.shape[0]

        hooks.append(model.get_submodule(n).register_forward_hook(hook))
    with torch.no_grad():
        for b in batches:
            model(**b)
    for h in hooks:
        h.remove()
    return {n: grams[n] / tokens[n] for n in names}


@pytest.mark.parametrize("make", [tiny_llama, tiny_qwen2])
@pytest.mark.parametrize("runs_on", [None, torch.device("cpu")], ids=["in-place", "moved-per-batch"])
def test_blockwise_grams_match_a_full_forward(make, runs_on):
    """Also when each batch is moved to the block's device for its run (offloaded activations)."""
    model = make()
    batches = token_batches()
    (stack,) = ADAPTER.stacks(model)
    groups, blocks = stack.groups, stack.blocks
    names = [f"{p}.{g[0]}" for p, _ in blocks for g in groups]
    expected = _reference_grams(model, batches, names)
    inputs = capture_block_inputs(model, blocks[0][1], batches)
    assert len(inputs) == len(batches)
    for prefix, block in blocks:
        stats, inputs = block_grams(block, groups, inputs, device=runs_on)
        for g in groups:
            stat = stats[g[0]]
            assert stat.tokens == 6 * 24 and stat.nonfinite_batches == 0
            torch.testing.assert_close(stat.gram, expected[f"{prefix}.{g[0]}"], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("make", [tiny_llama, tiny_gemma3])
@pytest.mark.parametrize("sequential", [False, True])
def test_blocks_calibrate_on_the_16_bit_model_or_sequentially_on_the_compressed_one(make, sequential, monkeypatch):
    """Each block's attention-input Gram, as factorization receives it, equals that of the 16-bit
    model, or with `sequential` that of the model compressed so far (the blocks before it); also
    where blocks of two kinds take their own masks and rotary tables (Gemma 3)."""
    model = make()
    original = copy.deepcopy(model)
    seen = {}
    real = apply.factorize_many

    def spy(jobs, **options):
        seen.update({name: gram for name, (_, gram, _) in jobs.items()})
        return real(jobs, **options)

    monkeypatch.setattr(apply, "factorize_many", spy)
    config = CompressionConfig(cr=0.3, static=True, iters=2, device="cpu", sequential=sequential)
    compress_model(model, ADAPTER.stacks(model), tiny_calibration(), config)
    names = [name for name in seen if name.endswith("self_attn.q_proj")]
    assert len(names) == model.config.num_hidden_layers
    expected = _reference_grams(model if sequential else original, token_batches(), names)
    untouched = _reference_grams(original, token_batches(), names)
    for name in names:
        torch.testing.assert_close(seen[name], expected[name], rtol=1e-4, atol=1e-6)
    later = names[1]  # the first block sees the same inputs either way; the second does not
    assert torch.allclose(seen[later], untouched[later], rtol=1e-4, atol=1e-6) != sequential


def test_nonfinite_batches_are_counted_not_hidden():
    model = tiny_llama()
    (stack,) = ADAPTER.stacks(model)
    groups, blocks = stack.groups, stack.blocks
    inputs = capture_block_inputs(model, blocks[0][1], token_batches(n=3))
    inputs[1].args = (torch.full_like(inputs[1].args[0], float("nan")),) + inputs[1].args[1:]
    stats, _ = block_grams(blocks[0][1], groups, inputs)
    q = stats[groups[0][0]]
    assert q.nonfinite_batches == 1 and q.tokens == 2 * 24
    assert torch.isfinite(q.gram).all()


def _poisoned(n: int, bad: int):
    """A tiny Llama whose embedding of token 127 is NaN, and n batches of which only `bad` holds it."""
    model, batches = tiny_llama(), token_batches(n=n)
    model.model.embed_tokens.weight.data[127] = float("nan")
    for k, batch in enumerate(batches):
        batch["input_ids"][batch["input_ids"] == 127] = 0
        if k == bad:
            batch["input_ids"][0, 5] = 127
    return model, CalibrationData(batches, "poisoned", "sha256:0", n * 24)


def test_many_nonfinite_batches_stop_the_run_and_a_few_are_reported(caplog):
    """One NaN batch in three is too many to calibrate on; one in twenty is a warning."""
    model, data = _poisoned(3, bad=1)
    with pytest.raises(ZooError, match=r"model\.layers\.0\.self_attn\.q_proj: 1 of 3 calibration batches .*NaN/Inf"):
        compress_model(model, ADAPTER.stacks(model), data, CompressionConfig(cr=0.3, iters=1))
    model, data = _poisoned(20, bad=1)
    with caplog.at_level("WARNING"):
        compress_model(model, ADAPTER.stacks(model), data, CompressionConfig(cr=0.3, iters=1))
    assert "1 of 20 calibration batches reached it with NaN/Inf inputs" in caplog.text


def test_empty_calibration_is_an_error():
    model = tiny_llama()
    with pytest.raises(ZooError, match="calibration set is empty"):
        capture_block_inputs(model, ADAPTER.stacks(model)[0].blocks[0][1], [])


def test_each_kind_of_block_is_fed_its_own_mask_and_rotary_table():
    """Gemma 3's full-attention blocks, replayed on the captured stream, compute what they compute in
    the model (its own hidden states, block by block), and would not on the sliding blocks' inputs;
    the blocks need not be held to capture them (streamed, they are on the meta device)."""
    model, batches = tiny_gemma3(), token_batches(n=2)
    (stack,) = ADAPTER.stacks(model)
    assert stack.kinds == model.config.layer_types
    by_kind = capture_kind_inputs(model, stack.blocks, stack.kinds, batches)
    assert set(by_kind) == {"sliding_attention", "full_attention"} and len(by_kind["full_attention"]) == 2
    with torch.no_grad():
        expected = [model(**batch, output_hidden_states=True).hidden_states for batch in batches]
    items = by_kind[stack.kinds[0]]
    for index, ((_, block), kind) in enumerate(zip(stack.blocks, stack.kinds, strict=True)):
        items = dressed(items, by_kind[kind])
        for item, hidden in zip(items, expected, strict=True):
            torch.testing.assert_close(hidden_of(item), hidden[index])
        if kind == "full_attention":
            wrong = replay(block, dressed(items, by_kind["sliding_attention"]))
        items = replay(block, items)
    assert not torch.allclose(hidden_of(wrong[0]), expected[0][3], atol=1e-3)  # block 2 fed block 0's

    skeleton = copy.deepcopy(model)
    for _, block in ADAPTER.stacks(skeleton)[0].blocks:
        block.to("meta")
    again = capture_kind_inputs(skeleton, ADAPTER.stacks(skeleton)[0].blocks, stack.kinds, batches)
    for kind, items in by_kind.items():
        for a, b in zip(items, again[kind], strict=True):
            torch.testing.assert_close((a.args, a.kwargs), (b.args, b.kwargs))

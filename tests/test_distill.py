"""End-to-end distillation under a fixed support: it must bring the compressed model's next-token
distributions closer to the 16-bit model's on samples it did not see, and leave the support, k, s
and the stored layout as they were."""

import copy
import logging
import math

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

import zoo.pipeline
from tests.conftest import TINY_RUN
from tests.planned import tiny_llama_plan
from tests.tiny_models import tiny_calibration, tiny_llama
from zoo.cli import main
from zoo.compression.apply import compress_model
from zoo.compression.config import CompressionConfig
from zoo.compression.distill import _output_units, backbone_of, distill, divergence, teacher_states
from zoo.compression.layer import CompotLinear
from zoo.errors import ZooError
from zoo.format.checkpoint import WEIGHTS
from zoo.format.progress import progress_dir
from zoo.modalities.base import get_adapter

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def compressed():
    """A tiny Llama, its compressed copy (CR 0.4, not healed), 32 calibration samples and 8 held out.
    Its final norm is scaled up: a random model's next-token distributions are otherwise nearly uniform,
    and every model's divergence from them nearly 0."""
    base = tiny_llama()
    with torch.no_grad():
        base.model.norm.weight.mul_(6)
    model = copy.deepcopy(base)
    calibration, held = tiny_calibration(32, 24, seed=0), tiny_calibration(8, 24, seed=1)
    config = CompressionConfig(cr=0.4, heal=0, iters=3, forms="single")
    compress_model(model, get_adapter("llm").stacks(model), calibration, config)
    return base, model, calibration.batches, held.batches


def _distilled(compressed, steps, lr):
    base, model, batches, _ = compressed
    model = copy.deepcopy(model)
    kept = distill(model, batches, teacher_states(base, batches, CPU), steps, lr)
    return model, kept


def _divergence(model, batches, teacher) -> float:
    backbone, head = backbone_of(model), model.get_output_embeddings()
    with torch.no_grad():
        values = [divergence(backbone, head, b, t).item() for b, t in zip(batches, teacher, strict=True)]
    return math.fsum(values) / len(values)


def _stored(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_distillation_lowers_the_divergence_on_held_out_samples(compressed):
    base, model, _, held = compressed
    teacher = teacher_states(base, held, CPU)
    before = _divergence(model, held, teacher)
    distilled, kept = _distilled(compressed, 60, 3e-3)
    assert kept
    assert _divergence(distilled, held, teacher) < 0.9 * before


def test_distillation_keeps_the_support_k_s_and_the_stored_layout(compressed):
    _, model, _, _ = compressed
    distilled, _ = _distilled(compressed, 20, 1e-3)
    before, after = _stored(model), _stored(distilled)
    assert {k: (v.shape, v.dtype) for k, v in before.items()} == {k: (v.shape, v.dtype) for k, v in after.items()}
    masks = [k for k in before if k.endswith("code_mask")]
    assert masks and all(torch.equal(before[k], after[k]) for k in masks)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.endswith("code_values"))
    outside = [k for k in before if not any(k.endswith(t) for t in ("dictionary", "code_values"))]
    assert all(torch.equal(before[k], after[k]) for k in outside)  # norms, embeddings, head: left alone
    for (name, a), b in zip(model.named_modules(), distilled.modules(), strict=True):
        if isinstance(a, CompotLinear):
            assert (a.k, a.s) == (b.k, b.s), name
            assert torch.equal(a.support(), b.support()) and bool((b.dense_codes()[~b.support()] == 0).all())


def test_distillation_that_raises_the_divergence_is_not_kept(compressed, caplog):
    _, model, _, _ = compressed
    with caplog.at_level(logging.WARNING):
        distilled, kept = _distilled(compressed, 20, 0.9)
    assert not kept and "distillation raised the divergence" in caplog.text
    assert all(torch.equal(a, b) for a, b in zip(_stored(model).values(), _stored(distilled).values(), strict=True))


def test_distillation_is_deterministic(compressed):
    first, _ = _distilled(compressed, 10, 1e-3)
    second, _ = _distilled(compressed, 10, 1e-3)
    assert all(torch.equal(a, b) for a, b in zip(_stored(first).values(), _stored(second).values(), strict=True))


def test_distillation_does_not_depend_on_how_loud_each_input_channel_is(compressed):
    """Louder channels read by quieter dictionary columns are the same model (Gemma-3 and Qwen2.5 have
    such channels): trained in each factor's output units, distillation changes it alike."""
    base, model, batches, held = compressed
    loud = copy.deepcopy(model)
    loudness = torch.logspace(-1, 1, model.config.hidden_size)
    attention = loud.model.layers[0].self_attn
    with torch.no_grad():
        loud.model.layers[0].input_layernorm.weight.mul_(loudness)
        for projection in (attention.q_proj, attention.k_proj, attention.v_proj):
            projection.dictionary.copy_(projection.dictionary.float() / loudness)
    teacher = teacher_states(base, batches, CPU)
    changes = []
    for start in (model, loud):
        distilled = copy.deepcopy(start)
        assert distill(distilled, batches, teacher, 20, 3e-3)
        changes.append(_logits(distilled, held) - _logits(start, held))
    assert changes[0].abs().mean() > 0.01  # it did move the model
    assert (changes[1] - changes[0]).norm() < 0.05 * changes[0].norm()


def test_a_layer_no_sample_reaches_distills_as_it_is(compressed):
    """An expert no token was routed to has no measured units: it trains raw rather than failing."""
    _, model, batches, _ = compressed
    layers = {name: m for name, m in model.named_modules() if isinstance(m, CompotLinear)}
    reached = next(iter(layers))
    idle = copy.deepcopy(layers[reached])  # in no forward pass
    units = _output_units(model.model, {reached: layers[reached], "idle": idle}, batches[:2])
    assert units["idle"] is None
    inputs, atoms = units[reached]
    assert inputs.shape == (layers[reached].in_features,) and atoms.shape == (layers[reached].k,)
    assert torch.isclose(atoms.mean(), torch.tensor(1.0)) and bool((atoms > 0).all())


def _logits(model, batches) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(**batch).logits for batch in batches])


@pytest.fixture
def peaked_dir(tmp_path):
    """The conftest's tiny Llama folder, its final norm scaled up as `compressed`'s."""
    from tests.tiny_models import tiny_tokenizer

    folder, model = tmp_path / "tiny-llama-peaked", tiny_llama()
    with torch.no_grad():
        model.model.norm.weight.mul_(6)
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def _compress(model_dir, text_file, out, *extra):
    args = ["compress", model_dir, *TINY_RUN, "--calibration", text_file, "--iters", 3, "--out", out, *extra]
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


DISTILLED = ("--heal", 0, "--n-samples", 16, "--distill", 10, "--distill-lr", 3e-4)


def test_a_run_killed_while_distilling_resumes_and_saves_the_same_checkpoint(
    tmp_path, peaked_dir, text_file, monkeypatch, caplog
):
    model_dir = peaked_dir
    plain, whole, out = tmp_path / "plain", tmp_path / "whole", tmp_path / "resumed"
    assert _compress(model_dir, text_file, plain, *DISTILLED[:4]).exit_code == 0
    assert _compress(model_dir, text_file, whole, *DISTILLED).exit_code == 0
    assert (whole / WEIGHTS).stat().st_size == (plain / WEIGHTS).stat().st_size
    assert load_file(whole / WEIGHTS).keys() == load_file(plain / WEIGHTS).keys()
    assert (whole / WEIGHTS).read_bytes() != (plain / WEIGHTS).read_bytes()  # distilled

    def killed(*args):
        raise KeyboardInterrupt  # as a kill would, once every block was kept

    with monkeypatch.context() as patch:
        patch.setattr(zoo.pipeline, "distill", killed)
        assert _compress(model_dir, text_file, out, *DISTILLED).exit_code != 0
    assert not out.exists() and len(list(progress_dir(out).glob("*.safetensors"))) == 2
    with caplog.at_level(logging.WARNING):
        assert _compress(model_dir, text_file, out, *DISTILLED).exit_code == 0
    assert "2 block(s) already compressed" in caplog.text
    assert (out / WEIGHTS).read_bytes() == (whole / WEIGHTS).read_bytes()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--distill", "-1"), "distill -1 must be at least 0"),
        (("--distill", "4", "--quantize", "gptq-w4"), "distill with quantize is not built yet"),
        (("--distill", "4", "--method", "gptq", "--quantize", "gptq-w4"), "distill does not apply to method gptq"),
    ],
)
def test_bad_distillation_settings_are_refused_before_any_weights_load(
    tmp_path, model_dir, monkeypatch, extra, message
):
    monkeypatch.setattr(zoo.pipeline, "plan", lambda *a, **k: pytest.fail("planned with a bad setting"))
    result = CliRunner().invoke(main, ["compress", str(model_dir), *extra, "--out", str(tmp_path / "x")])
    assert result.exit_code != 0 and message in result.output


def test_distillation_is_refused_where_it_is_not_built():
    config = CompressionConfig(distill=4)
    with pytest.raises(ZooError, match="whisper models do not distill yet"):
        zoo.pipeline.check_distillable(config, get_adapter("whisper"), None, streamed=False)
    with pytest.raises(ZooError, match="streams its weights"):
        zoo.pipeline.check_distillable(config, get_adapter("llm"), tiny_llama(), streamed=True)
    with pytest.raises(ZooError, match="no backbone and output head apart"):
        zoo.pipeline.check_distillable(config, get_adapter("llm"), tiny_llama().model, streamed=False)


def test_the_plan_counts_distillation_in_time_and_memory():
    plain, distilled = tiny_llama_plan(8), tiny_llama_plan(8, distill_steps=100)
    assert distilled.device_bytes > plain.device_bytes and distilled.host_bytes > plain.host_bytes
    assert distilled.seconds > plain.seconds
    assert distilled.distill_bytes == distilled.device_bytes  # the whole model distilling is the peak here
    assert any(line.startswith("distill ") for line in distilled.lines())
    with pytest.raises(ZooError, match="compress without --distill"):
        distilled.check(host_limit=distilled.host_bytes - 1, device_limit=None)

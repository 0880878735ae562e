"""Checks against references computed here, independently of the code under test: GPTQ with an
identity Gram is round-to-nearest on a min-max grid (written out in numpy below), and the "N%
smaller" figure's base is the size of the base really saved as a 16-bit safetensors file."""

import json
import struct

import numpy as np
import pytest
import torch

from zoo.engine.gptq import gptq


def _rtn_reference(w: np.ndarray, bits: int, group: int, support: np.ndarray | None) -> tuple[np.ndarray, ...]:
    """Round-to-nearest, row by row and group by group of the kept entries (in column order): a
    min-max asymmetric grid holding 0, its scale rounded to float16 first. Returns the dequantized
    matrix, each entry's step (its group's scale; 0 off the support) and whether it fell off the grid."""
    maxq = 2**bits - 1
    out, step, clipped = np.zeros_like(w), np.zeros_like(w), np.zeros(w.shape, dtype=bool)
    for r in range(w.shape[0]):
        kept = np.arange(w.shape[1]) if support is None else np.flatnonzero(support[r])
        for start in range(0, len(kept), group):
            cols = kept[start : start + group]
            vals = w[r, cols]
            lo, hi = np.float32(min(vals.min(), 0)), np.float32(max(vals.max(), 0))
            if lo == hi:
                lo, hi = np.float32(-1), np.float32(1)
            scale = np.float32(np.float16((hi - lo) / np.float32(maxq)))
            zero = np.clip(np.round(-lo / scale), 0, maxq)
            unclipped = np.round(vals / scale) + zero
            q = np.clip(unclipped, 0, maxq)
            out[r, cols], step[r, cols], clipped[r, cols] = (q - zero) * scale, scale, q != unclipped
    return out, step, clipped


@pytest.mark.parametrize("bits, group", [(4, 16), (3, 8), (2, 32), (8, 16)])
@pytest.mark.parametrize("sparse", [False, True])
def test_gptq_with_an_identity_gram_is_round_to_nearest(bits, group, sparse):
    g = torch.Generator().manual_seed(bits * group)
    rows, cols = 12, 64
    weight = torch.randn(rows, cols, generator=g) * torch.linspace(0.1, 3, cols)  # groups of unlike ranges
    support = None
    if sparse:  # the same number of kept entries per row, as COMPOT's codes have
        order = torch.rand(rows, cols, generator=g).argsort(dim=1)[:, :40]
        support = torch.zeros(rows, cols, dtype=torch.bool).scatter_(1, order, True)
    _, deq = gptq(weight, torch.eye(cols), bits, group, support)
    w = weight.numpy()
    expected, step, clipped = _rtn_reference(w, bits, group, None if support is None else support.numpy())
    np.testing.assert_array_equal(deq.numpy(), expected)
    kept = np.ones_like(w, dtype=bool) if support is None else support.numpy()
    error, half = np.abs(deq.numpy() - w)[kept], step[kept] / 2
    inside = ~clipped[kept]
    assert inside.mean() > 0.9  # only a group's extremes can fall off the grid
    assert (error[inside] <= half[inside] * (1 + 1e-6)).all()  # within half a step of its original
    # Off the grid's ends (a group's extremes), by at most what rounding the scale to float16 (11 bits)
    # moves maxq steps: 0.007 of a step at 4 bits, 0.12 at 8.
    assert (error <= half + (2**bits - 1) * 2.0**-11 * step[kept]).all()
    assert (deq.numpy()[~kept] == 0).all()


def _safetensors_sizes(path) -> tuple[int, int]:
    """A safetensors file's size and its header's (the 8-byte length and the JSON it announces)."""
    data = path.read_bytes()
    (header,) = struct.unpack("<Q", data[:8])
    return len(data), 8 + header


def test_base_bytes_is_the_base_saved_as_a_16_bit_safetensors_file(tmp_path, model_dir, text_file):
    """The figure "N% smaller than the base as a 16-bit checkpoint" divides by what such a file holds."""
    from click.testing import CliRunner
    from transformers import AutoModelForCausalLM

    from tests.conftest import TINY_RUN
    from zoo.cli import main

    out = tmp_path / "out"
    args = ["compress", model_dir, *TINY_RUN, "--iters", 2, "--calibration", text_file, "--out", out]
    result = CliRunner().invoke(main, [*map(str, args)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    record = json.loads((out / "compot_record.json").read_text())
    base_bytes, file_bytes = record["base_bytes"], record["file_bytes"]

    saved = tmp_path / "base-16bit"
    AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.bfloat16).save_pretrained(saved)
    size, header = _safetensors_sizes(saved / "model.safetensors")
    assert size - header == base_bytes and abs(size - base_bytes) <= header
    compressed, compressed_header = _safetensors_sizes(out / "model.safetensors")
    assert abs(compressed - file_bytes) <= compressed_header  # the numerator is a real file's size too
    assert f"{1 - file_bytes / base_bytes:.1%} smaller than the base" in result.output

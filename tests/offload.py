"""The device path's capture (accelerate's offload hooks), checked on the CPU itself."""

import torch

from zoo.compression.grams import capture_block_inputs


def assert_hooked_capture_matches(model, stacks, batches) -> None:
    """Through the offload hooks, each stack's first block receives exactly what it receives
    without them, and the model keeps its very parameters and no hook afterwards."""
    before = dict(model.named_parameters())
    for stack in stacks:
        first = stack.blocks[0][1]
        plain = capture_block_inputs(model, first, batches)
        hooked = capture_block_inputs(model, first, batches, torch.device("cpu"))
        for a, b in zip(plain, hooked, strict=True):
            torch.testing.assert_close(b.args, a.args, rtol=0, atol=0)
            torch.testing.assert_close(b.kwargs, a.kwargs, rtol=0, atol=0)
    assert all(p is before[name] for name, p in model.named_parameters())
    assert not any(hasattr(m, "_hf_hook") for m in model.modules())

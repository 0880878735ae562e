"""transformers integration: after `import zoo`, `AutoModelForCausalLM.from_pretrained(dir)`
rebuilds a compressed checkpoint with its CompotLinear layers, like any pre-quantized model.

transformers builds the architecture on the meta device, calls
`_process_model_before_weight_loading` (we swap the shells in there), then loads
model.safetensors into whatever modules are present. Shell tensors carry their storage
dtype, so the 16-bit factors and the uint8 mask load as saved. Once checked, the layers take
their inference layout on the device they were loaded to (`CompotLinear.to_inference`), which
no longer holds the factors: such a model runs, and refuses `save_pretrained`.

A variant's config.json is typed "compot" so that transformers alone refuses it:
zoo.format.variant_config says why and resolves it to the base's config.
"""

from __future__ import annotations

import logging
import re

import torch
from transformers.quantizers.auto import register_quantization_config, register_quantizer
from transformers.quantizers.base import HfQuantizer
from transformers.utils.quantization_config import QuantizationConfigMixin

from zoo.compression.layer import COMPRESSED, to_inference
from zoo.errors import ZooError
from zoo.format.checkpoint import GUARD, check_factors, guard_keys, swap_in_shells

logger = logging.getLogger(__name__)


@register_quantization_config("compot")
class CompotConfig(QuantizationConfigMixin):
    """The layer table `save_compressed` writes: name -> in/out features, k, s, method, bias, storage dtype."""

    def __init__(self, layers: dict[str, dict] | None = None, **kwargs) -> None:
        self.quant_method = "compot"
        self.layers = layers or {}

    def to_dict(self) -> dict:
        return {"quant_method": "compot", "layers": self.layers}


@register_quantizer("compot")
class CompotQuantizer(HfQuantizer):
    """Loads pre-compressed checkpoints only: compression needs calibration data (`zoo compress`)."""

    requires_calibration = True

    def __init__(self, quantization_config, **kwargs) -> None:
        super().__init__(quantization_config, **kwargs)
        self.layouts: dict[str, int] = {}  # how many layers took each layout, once loaded

    def _process_model_before_weight_loading(self, model, **kwargs):
        swap_in_shells(model, self.quantization_config.layers)
        guards = {re.escape(key) + "$" for key in guard_keys(self.quantization_config.layers)}
        model._keys_to_ignore_on_load_unexpected = set(model._keys_to_ignore_on_load_unexpected or ()) | guards
        return model

    def _process_model_after_weight_loading(self, model, **kwargs):
        """transformers fills a tensor the checkpoint lacks with whatever memory held and only prints
        a report; a compressed layer missing one of its factors is refused instead. Loaded tensors
        are the ones transformers marks `_is_hf_initialized`."""
        source = getattr(model.config, "_name_or_path", "the checkpoint")
        for name, module in model.named_modules():
            if isinstance(module, COMPRESSED):
                for label, t in [*module.named_parameters(), *module.named_buffers()]:
                    if not getattr(t, "_is_hf_initialized", False):
                        raise ZooError(f"{source}: the weights hold no {name}.{label} for compressed layer {name}")
        check_factors(model, source)
        self.layouts = to_inference(model)
        return model

    def get_state_dict_and_metadata(self, model):
        """What `save_pretrained` writes: the stored form and the checkpoint's guard (zoo.format.checkpoint)."""
        guard = f"{min(self.quantization_config.layers)}.{GUARD}"
        return {**model.state_dict(), guard: torch.zeros(0, dtype=torch.uint8)}, {}

    def is_serializable(self) -> bool:
        if self.layouts.get("stored", 0) == sum(self.layouts.values()):
            return True
        logger.warning(
            "this compressed model was loaded for inference: %s of its layers multiply from a layout derived "
            "from the factors and no longer hold them; save_pretrained cannot write it back. The folder it was "
            "loaded from is its checkpoint (zoo.load(path, inference=False) keeps the factors).",
            sum(self.layouts.values()) - self.layouts.get("stored", 0),
        )
        return False

    @property
    def is_trainable(self) -> bool:
        return False

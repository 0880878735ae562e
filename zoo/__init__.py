"""compot-zoo: training-free compression of Transformers with COMPOT.

`import zoo` is cheap (no torch, no transformers): the "compot" model type and quantization
method are registered with transformers when transformers loads its configs or quantizers, so after `import zoo`,
`AutoModelForCausalLM.from_pretrained(checkpoint)` rebuilds compressed layers; `zoo.compress`
and `zoo.load` import what they need when first used.
"""

from __future__ import annotations

import wrapt

__version__ = "0.1.0"
__all__ = ["__version__", "compress", "load", "save"]

_LAZY = {
    "compress": ("zoo.pipeline", "compress"),
    "save": ("zoo.pipeline", "save"),
    "load": ("zoo.format.checkpoint", "load_compressed"),
}


@wrapt.when_imported("transformers.quantizers.auto")
def _register_quantizer(_module) -> None:
    import zoo.format.quantizer  # noqa: F401  (registers the "compot" quantizer with transformers)


@wrapt.when_imported("transformers.models.auto.configuration_auto")
def _register_model_type(_module) -> None:
    import zoo.format.variant_config  # noqa: F401  (registers the "compot" model type with transformers)


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'zoo' has no attribute {name!r}")
    import importlib

    module, attr = _LAZY[name]
    return getattr(importlib.import_module(module), attr)

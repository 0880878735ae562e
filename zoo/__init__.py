"""compot-zoo: training-free compression of Transformers with COMPOT.

Importing zoo registers the "compot" quantization method with transformers, so
`AutoModelForCausalLM.from_pretrained(checkpoint)` rebuilds compressed layers.
"""

__version__ = "0.1.0"

from zoo import hf_quantizer as _hf_quantizer  # noqa: E402,F401  (registration side effect)
from zoo.checkpoint import load_compressed as load  # noqa: E402
from zoo.compression import compress  # noqa: E402

__all__ = ["__version__", "compress", "load"]

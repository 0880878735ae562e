"""compot-zoo: training-free compression of Transformers with COMPOT."""

__version__ = "0.1.0"

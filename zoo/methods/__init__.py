"""Compression methods, one module each, in one table (`zoo.methods.registry`): what a method
stores and how it is shown. Importing the package registers the built-in ones."""

from zoo.methods import compot, gptq, svd_llm  # noqa: F401 (each registers its method)
from zoo.methods.registry import DENSE, METHODS, Method, display_name, get, names, register, variant_kinds

__all__ = ["DENSE", "METHODS", "Method", "display_name", "get", "names", "register", "variant_kinds"]

"""Offline converters: packaged GGUF and CTranslate2 checkpoints into transformers folders, the
second source of models our machines cannot download from the Hub."""

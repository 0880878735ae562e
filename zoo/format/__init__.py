"""The checkpoint on disk: the compressed layers saved and loaded back, the transformers quantizer, and
the variant record."""

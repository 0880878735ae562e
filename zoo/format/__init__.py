"""The checkpoint on disk: the compressed layers saved and loaded back, the transformers quantizer,
the variant record, and safetensors files read and written one tensor at a time."""

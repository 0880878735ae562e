"""Applying the engine to a model: the compression config (`config`), what adapters hand over
(`targets`), Gram collection (`grams`), the compressed layer (`layer`), the per-layer record
(`report`) and the block-by-block compressor (`apply`). Import the module you need: the config
is read by the command line, which must not pay for torch."""

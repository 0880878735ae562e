"""modalities of compot-zoo (import as zoo.modalities)."""

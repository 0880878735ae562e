"""evaluators of compot-zoo (import as zoo.evaluators)."""

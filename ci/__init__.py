"""ci of compot-zoo (import as zoo.ci)."""

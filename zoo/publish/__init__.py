"""Publishing: scorecards, model cards, publishers (the Hub, a local registry), fingerprints, the site.
It reads the variant record and never the engine."""

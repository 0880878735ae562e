"""Shipped beside every COMPOT-compressed variant's config.json, which names it in `auto_map`.

The variant's config.json says `"model_type": "compot"`, which plain transformers does not know,
so `AutoConfig`, `AutoModel*.from_pretrained` and `pipeline()` stop and ask for
`trust_remote_code=True` instead of loading random weights. With it, this file runs: it imports
compot-zoo (or says how to install it), which registers the "compot" model type and quantizer,
and hands back the base architecture's config, so the variant loads exactly as with `import zoo`.
"""

from transformers import AutoConfig, PretrainedConfig

INSTALL = (
    "This model is compressed with COMPOT: its projections are stored as factors that transformers "
    "alone cannot read (it would fill them with random weights). Install the project that reads them, "
    "`pip install compot-zoo`, then `import zoo` before `from_pretrained` or `pipeline`, or load it "
    "with `zoo.load(path_or_repo)`."
)

try:
    import zoo  # noqa: F401  (registers the "compot" model type and quantizer with transformers)
except ImportError as exc:
    raise ImportError(INSTALL) from exc


class CompotConfig(PretrainedConfig):
    """Stands for the variant's config until compot-zoo is imported; then resolves to the base's."""

    model_type = "compot"

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        return AutoConfig.from_pretrained(pretrained_model_name_or_path, **kwargs)

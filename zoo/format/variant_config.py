"""The "compot" model type of a variant's config.json, registered with transformers by `import zoo`.

Never silently random weights. Without this project, transformers only warns about an unknown
`quant_method` ("we will skip the quantization"), builds the base architecture and initialises
every projection it finds no `weight` for at random; a missing key is a report, not an error, and
no field of `quantization_config` can make it refuse (an unknown method is always skipped). So the
refusal sits one step earlier, where transformers does refuse: `AutoConfig` (which
`AutoModel*.from_pretrained` and `pipeline()` call first) raises on a `model_type` it does not
know unless the folder's `auto_map` names code and the caller passes `trust_remote_code=True`.
A variant's config.json is therefore typed "compot" (the base's type kept in `base_model_type`)
and names configuration_compot.py, shipped beside it (zoo/format/remote): transformers alone asks
for `trust_remote_code`; with it, that file imports compot-zoo or raises "pip install compot-zoo,
then `import zoo`". `import zoo` registers "compot" below, so the folder loads as before, from the
base's own config class: the same config, the same model, the same outputs. This is the Hub's
own mechanism for models that need code (a repository tagged `custom_code` gets
`trust_remote_code=True` in its "Use this model" snippet), and it holds for every path through
`AutoConfig`. The same registration refuses a config.json whose `quantization_config` was lost,
which would otherwise load the base architecture with nothing to say that the projections were
never read.

A concrete class (`LlamaForCausalLM.from_pretrained(variant)`) reads the config with its own class,
which only warns about the foreign `model_type`; what stops it is the checkpoint's guard, one empty
`weight` of a compressed layer, whose shape transformers refuses (zoo.format.checkpoint.GUARD).
What this does not cover: transformers' own `save_pretrained` writes a config class's own type, so a folder it writes
from a compressed model carries the base's `model_type`: `zoo.save` / `zoo compress` write what
is published.
"""

from __future__ import annotations

from transformers import AutoConfig, PretrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from zoo.errors import ZooError
from zoo.format.checkpoint import BASE_TYPE, CONFIG, VARIANT_TYPE


class CompotVariantConfig(PretrainedConfig):
    """The "compot" model type of a variant's config.json: resolves to the base architecture's
    config (with its `quantization_config`), or refuses a config that lost it."""

    model_type = VARIANT_TYPE

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        source = f"{kwargs.get('name_or_path') or 'the variant'}/{CONFIG}"
        return base_config_class(config_dict, source).from_dict(base_config_dict(config_dict, source), **kwargs)


def base_config_class(config_dict: dict, source: str) -> type[PretrainedConfig]:
    base = config_dict.get(BASE_TYPE)
    if base not in CONFIG_MAPPING or base == VARIANT_TYPE:
        raise ZooError(f"{source}: {BASE_TYPE} {base!r} is not a transformers model type")
    return CONFIG_MAPPING[base]


def base_config_dict(config_dict: dict, source: str) -> dict:
    """The base's config.json as it was before saving: its own model_type, no `auto_map`."""
    quantization = config_dict.get("quantization_config")
    if not isinstance(quantization, dict) or quantization.get("quant_method") != "compot":
        raise ZooError(
            f"{source} is a COMPOT-compressed variant, but its quantization_config (the table of "
            "compressed layers) is missing: its projections cannot be rebuilt, and loading it as the base "
            "architecture would give them random weights. Restore config.json from the published variant."
        )
    rest = {k: v for k, v in config_dict.items() if k not in (BASE_TYPE, "auto_map")}
    return rest | {"model_type": config_dict[BASE_TYPE]}


AutoConfig.register(VARIANT_TYPE, CompotVariantConfig)

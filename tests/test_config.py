"""The compression config: one place for each setting's default, help and check."""

import pytest

from zoo import methods
from zoo.compression.config import CompressionConfig
from zoo.engine.factorization import solvable
from zoo.errors import ZooError


def test_every_registered_method_factorizes_in_the_engine_or_quantizes_alone():
    assert set(methods.names()) == {"compot", "svd-llm", "gptq"}
    assert set(solvable()) == {name for name in methods.names() if methods.get(name).factorizes}


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"cr": 1.0}, r"cr 1.0 must lie in \(0, 1\)"),
        ({"cr": float("nan")}, r"cr nan must lie in \(0, 1\)"),
        ({"method": "awq"}, "method 'awq' must be one of compot, gptq, svd-llm"),
        ({"ks_ratio": 0.5}, "ks_ratio 0.5 must be at least 1"),
        ({"iters": -1}, "iters -1 must be at least 0"),
        ({"tol": -0.1}, "tol -0.1 must be at least 0"),
        ({"max_cr": 1.0}, r"max_cr 1.0 must lie in \(0, 1\)"),
        ({"cr": 0.2, "min_cr": 0.3}, "allocation guards must bracket the target"),
        ({"storage_dtype": "float32"}, "storage_dtype 'float32' must be one of float16, bfloat16"),
    ],
)
def test_bad_settings_name_the_setting_and_the_value(settings, message):
    with pytest.raises(ZooError, match=message):
        CompressionConfig(**settings)


def test_every_setting_carries_help_and_the_determining_ones_exclude_where_it_runs():
    assert all(f.metadata["help"] for f in CompressionConfig.settings())
    config = CompressionConfig(cr=0.4, static=True, components=["encoder", "decoder"], device="cuda")
    assert "device" not in config.determining() and config.to_dict()["device"] == "cuda"
    assert config.changed() == {"cr": 0.4, "static": True, "components": ["encoder", "decoder"]}
    assert CompressionConfig(**config.to_dict()) == config  # what a record saves rebuilds the config

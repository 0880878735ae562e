"""COMPOT against SVD-LLM on a real model's layers, fed real English text."""

import pytest

from benchmarks.bench_engine import real_layers
from zoo.engine import factorize, functional_error

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def layers():
    return list(real_layers("smollm2-135m", blocks=[5], n_samples=8, seq_len=512))


@pytest.mark.parametrize("cr", [0.2, 0.4])
def test_compot_beats_svd_llm_on_real_layers(layers, cr):
    for name, weight, gram in layers:
        compot = factorize(weight, gram, cr=cr, method="compot", name=name)
        svd = factorize(weight, gram, cr=cr, method="svd-llm", name=name)
        budget = (1 - cr) * compot.dense_bits
        assert compot.bits <= budget and svd.bits <= budget, name
        e_compot = functional_error(weight, compot.reconstruct(), gram)
        e_svd = functional_error(weight, svd.reconstruct(), gram)
        print(f"{name} cr={cr}: COMPOT {e_compot:.4g} SVD-LLM {e_svd:.4g} ratio {e_compot / e_svd:.3f}")
        assert e_compot < e_svd, name

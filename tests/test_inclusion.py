"""The theory-driven layer-wise inclusion probabilities of math.md §2."""
import numpy as np
import pytest
from flax import nnx

from sparse_bnn.core.inclusion import layer_inclusion_probs, theory_inclusion_probs
from sparse_bnn.nets import MLP


def test_math_md_test_vectors():
    np.testing.assert_allclose(theory_inclusion_probs([784, 400, 400, 10], 60000), [1.5411e-3, 2.3438e-3], rtol=1e-4)
    np.testing.assert_allclose(theory_inclusion_probs([800, 800, 500, 10], 60000), [7.4765e-4, 1.1962e-3], rtol=1e-4)


def test_layers_use_the_formula_and_overrides():
    layers = MLP(784, (400, 400), 10, rngs=nnx.Rngs(0)).unit_layers()
    theory = layer_inclusion_probs(layers, 60000)
    assert theory == pytest.approx({"dense0": 1.5411e-3, "dense1": 2.3438e-3}, rel=1e-4)
    assert layer_inclusion_probs(layers, 60000, 1e-4) == {"dense0": 1e-4, "dense1": 1e-4}
    mixed = layer_inclusion_probs(layers, 60000, {"dense1": 0.3})
    assert mixed["dense1"] == 0.3 and mixed["dense0"] == pytest.approx(1.5411e-3, rel=1e-4)


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 1.5, {"dense0": 0.0}, {"nope": 0.1}, "magic"])
def test_bad_inclusion_is_rejected(bad):
    layers = MLP(10, (5,), 2, rngs=nnx.Rngs(0)).unit_layers()
    with pytest.raises(ValueError):
        layer_inclusion_probs(layers, 100, bad)


def test_bad_widths_are_rejected():
    with pytest.raises(ValueError):
        theory_inclusion_probs([784, 0, 10], 100)
    with pytest.raises(ValueError):
        theory_inclusion_probs([784, 400, 10], 0)

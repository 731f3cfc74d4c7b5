"""The fine-tuning phase: masks and inclusion logits frozen, the rest keeps training."""
import numpy as np
import optax
from flax import nnx
from numpyro.handlers import seed, substitute, trace

from sparse_bnn.train import fit
from sparse_bnn.core.model import Masks, SparseBNN
from sparse_bnn.nets import NETS
from sparse_bnn.core.posterior import keep_masks
from sparse_bnn.priors import get_prior


def test_resnet_fine_tuning_keeps_every_indicator_fixed():
    cls = NETS["resnet20"]
    config = cls.example_config()
    net = cls.from_config(config, nnx.Rngs(0))
    size, channels = config.get("image_size", 8), config.get("in_channels", 3)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, size, size, channels)).astype(np.float32)
    y = rng.integers(0, config.get("num_classes", 10), 32)
    prior = get_prior("ss-ghs", sigma_0=cls.reference_sigma_0)
    sparse = SparseBNN(net, prior, n_data=32, inclusion=cls.reference_inclusion)
    first = fit(sparse, x, y, epochs=1, batch_size=16, optimizer=optax.adam(1e-2), progress=False)
    # switch every other unit off, as a long sparse phase would have
    params = dict(first.params)
    for layer in sparse.indicated_layers:
        logits = params[f"{layer.name}.z.logit"]
        params[f"{layer.name}.z.logit"] = logits.at[::2].set(-10.0)
    first.params = params
    keep = keep_masks(sparse, first.params)
    assert all(not bool(np.all(k)) and bool(np.any(k)) for k in keep.values())

    masks = Masks(units={name: np.asarray(k, np.float32) for name, k in keep.items()})
    frozen = SparseBNN(net, prior, n_data=32, inclusion=cls.reference_inclusion, freeze_indicators=True)
    tuned = fit(frozen, x, y, epochs=1, batch_size=16, optimizer=optax.adam(1e-2), progress=False,
                masks=masks, init_params=first.params)
    for name, value in first.params.items():
        if name.endswith(".z.logit"):
            np.testing.assert_array_equal(tuned.params[name], value)
    changed = [n for n in first.params if not n.endswith(".z.logit")
               and not np.array_equal(tuned.params[n], first.params[n])]
    assert changed, "fine-tuning trained nothing"
    for name, k in keep_masks(frozen, tuned.params, masks=tuned.state.masks).items():
        np.testing.assert_array_equal(np.asarray(k), np.asarray(keep[name]))
    # a posterior draw of the fine-tuned model has exactly zero weights in every removed unit
    values = {n: s["value"] for n, s in trace(substitute(seed(frozen.guide, 0), data=tuned.params)).get_trace().items()
              if s["type"] == "sample"}
    weights = frozen.effective_params(values, tuned.state.masks)
    for layer in frozen.layers:
        if layer.name not in keep:
            continue
        off = ~np.asarray(keep[layer.name])
        for member in layer.members:
            if member.path in weights:
                w = np.moveaxis(np.asarray(weights[member.path]), member.axis, 0)
                assert np.all(w[off] == 0.0)

"""Every training scheme on every placement: {plain, shrink (gamma rule), node-wise BMR + shrink,
element-wise BMR, fine-tune with frozen masks} x {1 device, 4 fake CPU devices} x {resident,
streamed}, and killed-then-resumed against uninterrupted. All runs share one subprocess that sees
4 fake CPU devices (the device count is fixed when JAX starts); 1-device runs use the first one."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sparse_bnn.core.model import Masks, SparseBNN
from sparse_bnn.nets.mlp import MLP
from sparse_bnn.priors import PRIORS, get_prior
from sparse_bnn.sparsify.reduction import NodeBMRRule, Reduction
from sparse_bnn.sparsify.shrink import Shrink, ShrinkSchedule
from sparse_bnn.train import fit, svi_optimizer

REPO = Path(__file__).resolve().parents[1]
N_DATA, FEATURES, BATCH, EPOCHS, KILLED_AT = 256, 8, 32, 8, 4
WIDTHS = (24, 24)
RELATIVE_TOLERANCE = 1e-5


def make_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N_DATA, FEATURES)).astype(np.float32)
    return x, (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int32)


def make_bnn(prior: str, **options) -> SparseBNN:
    options = {"rho_init": -3.0, **options}
    return SparseBNN(MLP(FEATURES, WIDTHS, 2, rngs=nnx.Rngs(0)), get_prior(prior), n_data=N_DATA, **options)


def zero_incoming_weights(bnn: SparseBNN, params: dict, layer, idle: np.ndarray) -> None:
    """Set, in place, the posterior means (``loc``) of the ``idle`` units' own weights and biases
    (``layer``'s members) to 0 in ``params`` (NumPy arrays)."""
    for ref in layer.members:
        site = bnn.weight_site(ref.path)
        index = [slice(None)] * params[f"{site}.loc"].ndim
        index[ref.axis] = idle
        params[f"{site}.loc"][tuple(index)] = 0.0


def idle_units_start(bnn: SparseBNN) -> dict:
    """``bnn``'s initial parameters with the odd units of the first layer confidently at zero
    (incoming weights and bias ``loc`` 0, narrow posteriors): units whose removal BMR favours at once."""
    params = {k: np.asarray(v).copy() for k, v in bnn.init_params().items()}
    layer = bnn.layers[0]
    zero_incoming_weights(bnn, params, layer, np.arange(layer.units) % 2 == 1)
    return {k: jnp.asarray(v) for k, v in params.items()}


def half_of_the_units() -> Masks:
    return Masks(units={name: jnp.asarray(np.arange(w) % 2 == 0, jnp.float32)
                        for name, w in zip(("dense0", "dense1"), WIDTHS)})


# name -> () -> (model, fit arguments); fresh hooks for every run (hooks cache compiled programs)
SCHEMES = {
    "plain": lambda: (make_bnn("ss-ghs"), {}),
    "shrink": lambda: (make_bnn("ss-gl"), dict(
        optimizer=svi_optimizer(1e-2, 3e-1),
        hooks=[Shrink(ShrinkSchedule(warmup_epochs=1, patience=1, bucket=4, shrink_factor=1.0))])),
    "nodewise_bmr_shrink": lambda: (make_bnn("flat"), dict(
        optimizer=svi_optimizer(1e-3), init_params=idle_units_start(make_bnn("flat")),
        hooks=[Shrink(ShrinkSchedule(bucket=4, shrink_factor=1.0), NodeBMRRule(1, max_prune_fraction=0.5))])),
    "elementwise_bmr": lambda: (make_bnn("flat"), dict(
        optimizer=svi_optimizer(1e-3), init_params=idle_units_start(make_bnn("flat")),
        hooks=[Reduction("elementwise", 1)])),
    "fine_tune": lambda: (make_bnn("ss-ig", freeze_indicators=True), dict(masks=half_of_the_units())),
}
PLACEMENTS = {"1 device": dict(devices=1, streaming=False), "4 devices": dict(devices=4, streaming=False),
              "1 device, streamed": dict(devices=1, streaming=True, stream_chunk_steps=4),
              "4 devices, streamed": dict(devices=4, streaming=True, stream_chunk_steps=4)}
RESUMED = ("4 devices", "1 device, streamed")


def summary(result) -> dict:
    return {"loss": [r["loss"] for r in result.history], "kept": [r["kept"] for r in result.history],
            "val_accuracy": [r["val_accuracy"] for r in result.history],
            "widths": [r.get("widths") for r in result.history],
            "params": {k: np.asarray(v).tolist() for k, v in result.params.items()},
            "masks": {k: np.asarray(v).tolist() for k, v in result.state.masks.units.items()},
            "compilations": result.compilations}


def run_scheme(scheme: str, placement: str, epochs: int = EPOCHS, **extra):
    x, y = make_data()
    bnn, arguments = SCHEMES[scheme]()
    return fit(bnn, x, y, epochs=epochs, batch_size=BATCH, progress=False, validation=(x[:64], y[:64]),
               **arguments, **PLACEMENTS[placement], **extra)


def run_matrix(workdir: str) -> dict:
    """Every scheme on every placement, and killed-then-resumed on two of them."""
    out = {}
    for scheme in SCHEMES:
        for placement in PLACEMENTS:
            out[f"{scheme} | {placement}"] = summary(run_scheme(scheme, placement))
        for placement in RESUMED:
            directory = Path(workdir) / f"{scheme}-{placement}".replace(" ", "_").replace(",", "")
            run_scheme(scheme, placement, epochs=KILLED_AT, checkpoint_dir=directory, checkpoint_interval=0)
            resumed = run_scheme(scheme, placement, checkpoint_dir=directory, resume=True)
            out[f"{scheme} | {placement} | resumed"] = summary(resumed)
    return out


FOUR_DEVICES = textwrap.dedent(r"""
    import json, sys
    import jax
    sys.path.insert(0, sys.argv[1])
    from tests.test_hooks_matrix import run_matrix
    assert jax.device_count() == 4, jax.devices()
    print("RESULT" + json.dumps(run_matrix(sys.argv[2])))
""")


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=4".strip())
    done = subprocess.run([sys.executable, "-c", FOUR_DEVICES, str(REPO), str(tmp_path_factory.mktemp("matrix"))],
                          env=env, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stderr[-4000:]
    line = next(l for l in done.stdout.splitlines() if l.startswith("RESULT"))
    return json.loads(line.removeprefix("RESULT"))


def assert_same_run(reference: dict, other: dict, label: str) -> None:
    assert other["kept"] == reference["kept"], label
    assert other["widths"] == reference["widths"], label
    assert other["masks"] == reference["masks"], label
    np.testing.assert_allclose(other["loss"], reference["loss"], rtol=RELATIVE_TOLERANCE, err_msg=label)
    np.testing.assert_allclose(other["val_accuracy"], reference["val_accuracy"], atol=1e-12, err_msg=label)
    assert other["params"].keys() == reference["params"].keys(), label
    for name, value in reference["params"].items():
        value, got = np.asarray(value), np.asarray(other["params"][name])
        scale = max(float(np.max(np.abs(value))), 1e-6)
        assert float(np.max(np.abs(got - value))) / scale < RELATIVE_TOLERANCE, f"{label}: {name}"


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_every_placement_gives_the_one_device_run(matrix, scheme):
    reference = matrix[f"{scheme} | 1 device"]
    for placement in PLACEMENTS:
        assert_same_run(reference, matrix[f"{scheme} | {placement}"], f"{scheme} on {placement}")


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_killed_then_resumed_equals_uninterrupted(matrix, scheme):
    for placement in RESUMED:
        assert_same_run(matrix[f"{scheme} | {placement}"], matrix[f"{scheme} | {placement} | resumed"],
                        f"{scheme} on {placement}, resumed at epoch {KILLED_AT}")


def test_the_schemes_do_what_they_say(matrix):
    """Shrinking rebuilds the network before the kill (so resuming rebuilds it too), BMR prunes,
    fine-tuning keeps its frozen masks."""
    shrink = matrix["shrink | 1 device"]
    assert shrink["compilations"] >= 2 and shrink["widths"][KILLED_AT - 1]["dense0"] < WIDTHS[0]
    node = matrix["nodewise_bmr_shrink | 1 device"]
    assert node["compilations"] >= 2 and node["widths"][KILLED_AT - 1]["dense0"] < WIDTHS[0]
    elementwise = matrix["elementwise_bmr | 1 device"]
    assert elementwise["compilations"] == 1 and sum(elementwise["kept"][-1].values()) <= sum(WIDTHS)
    tuned = matrix["fine_tune | 1 device"]
    assert tuned["masks"] == {k: np.asarray(v).tolist() for k, v in half_of_the_units().units.items()}
    assert all(kept == {"dense0": 12, "dense1": 12} for kept in tuned["kept"])
    plain = matrix["plain | 1 device"]
    assert plain["compilations"] == 1 and plain["loss"][-1] < plain["loss"][0]


@pytest.mark.parametrize("prior", sorted(PRIORS))
def test_every_prior_runs_through_every_hook(prior):
    """Gamma-rule shrinking needs indicators (refused with a clear error otherwise); BMR, node-wise
    with shrinking and element-wise, takes every prior in its non-centred form."""
    x, y = make_data()
    common = dict(epochs=3, batch_size=BATCH, progress=False, validation=(x[:64], y[:64]))
    bnn = make_bnn(prior)
    if any(bnn.samples_indicator(layer) for layer in bnn.layers):
        result = fit(bnn, x, y, hooks=[Shrink(ShrinkSchedule(warmup_epochs=1))], **common)
        assert "widths" in result.history[-1] and np.isfinite(result.history[-1]["loss"])
    else:
        with pytest.raises(ValueError, match="no trainable node indicators"):
            fit(bnn, x, y, hooks=[Shrink()], **common)
    for hook in (Shrink(rule=NodeBMRRule(1)), Reduction("elementwise", 1), Reduction("nodewise", 1)):
        result = fit(make_bnn(prior), x, y, hooks=[hook], **common)
        record = result.history[-1]
        assert np.isfinite(record["loss"]) and 0.0 <= record["val_accuracy"] <= 1.0
        assert ("alive" in record) if isinstance(hook, Shrink) else (0.0 <= record["pruned_fraction"] < 1.0)

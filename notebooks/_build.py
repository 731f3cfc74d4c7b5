"""Write the teaching notebooks (outputs stripped): ``python notebooks/_build.py``.

Each notebook is a list of ``("md" | "code", source)`` cells. Every notebook reads
``SPARSE_BNN_NOTEBOOK_SMALL=1`` (a tiny schedule, used by ``tests/test_notebooks.py``) at the top.
"""
from __future__ import annotations

from pathlib import Path

import nbformat

HERE = Path(__file__).parent

SMALL_SWITCH = '''import os

# SPARSE_BNN_NOTEBOOK_SMALL=1 picks a tiny schedule (the tests run that); leave it unset for the real thing.
SMALL = os.environ.get("SPARSE_BNN_NOTEBOOK_SMALL", "0") == "1"'''

QUICKSTART = [
    ("md", """# Quickstart: a sparse Bayesian MLP on Fashion-MNIST

We fit an MLP with a **spike-and-slab group horseshoe** prior (SS-GHS) on its hidden units,
read off which units the posterior keeps, turn the network into a **physically smaller** Flax
network, and save and reload it.

Every hidden unit `j` of layer `l` owns a group of weights (its incoming column and bias) and a
binary indicator `z_lj`. The variational posterior gives each unit an inclusion probability
`gamma_lj`; units with `gamma_lj <= 0.5` are switched off (the median-probability model)."""),
    ("code", SMALL_SWITCH),
    ("code", """import tempfile

import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from flax import nnx

from sparse_bnn.compact import io as compact_io, prune
from sparse_bnn.core import posterior
from sparse_bnn.data import flip_augment, load_dataset
from sparse_bnn.train import fit, svi_optimizer
from sparse_bnn.metrics import classification_metrics
from sparse_bnn.core.model import SparseBNN
from sparse_bnn.nets import MLP
from sparse_bnn.priors import get_prior
from sparse_bnn.compact.report import compression_report"""),
    ("md", """## Settings

The full setting is the MLP 784-400-400-10 on all 60,000 images; the small one (for tests) uses
2,000 images, narrower layers and a few epochs."""),
    ("code", """if SMALL:
    N_TRAIN, N_TEST, WIDTHS, EPOCHS, BATCH_SIZE = 2000, 1000, (64, 64), 3, 250
else:
    N_TRAIN, N_TEST, WIDTHS, EPOCHS, BATCH_SIZE = None, None, (400, 400), 200, 1024"""),
    ("md", """## Data

`load_dataset` finds Fashion-MNIST locally (`--data-dir`, `$SPARSE_BNN_DATA`, the Debian package
folder, the cache) or downloads it once. Images are scaled to [0, 1] and standardised; we hold
out 10% of the training images for validation."""),
    ("code", """data = load_dataset("fashion-mnist", n_train=N_TRAIN, n_test=N_TEST, validation_fraction=0.1)
print(data.summary())"""),
    ("md", """## Model

`SparseBNN` joins a plain Flax NNX network and a prior into a NumPyro model and guide. The prior
inclusion probability of each hidden layer, `lambda_l`, follows the theory-driven default of
`math.md` (tiny for wide layers)."""),
    ("code", """net = MLP(data.input_dim, WIDTHS, data.num_classes, rngs=nnx.Rngs(0))
# posterior scales start at softplus(-3): see docs/tuning.md, "Settings that prune"
bnn = SparseBNN(net, get_prior("ss-ghs"), n_data=len(data.x_train), rho_init=-3.0)
print("prior inclusion probabilities:", {k: float(v) for k, v in bnn.inclusion.items()})
print("unit layers:", [(layer.name, layer.units, layer.prunable) for layer in bnn.layers])"""),
    ("md", """## Fit

`fit` runs SVI with Adam, one jit-compiled `lax.scan` per epoch; each history record holds the
loss (per datum: NLL + KL / N), the kept units and the validation accuracy. The weights learn at
3e-3 and the indicators at 1e-2, so units are decided within ~60 epochs."""),
    ("code", """result = fit(bnn, data.x_train, data.y_train, epochs=EPOCHS, batch_size=BATCH_SIZE,
             optimizer=svi_optimizer(3e-3, 1e-2),
             augment=flip_augment if data.flip_augment else None, progress=False,
             validation=(data.x_val, data.y_val))
last = result.history[-1]
print(f"epoch {last['epoch']}: loss {last['loss']:.3f}, kept {last['kept']}, "
      f"validation accuracy {last['val_accuracy']:.4f}")"""),
    ("md", """## Predict

Bayesian model averaging: the class probabilities averaged over posterior samples."""),
    ("code", """probs = posterior.predict(bnn, result.params, data.x_test, n_samples=10)
bma = classification_metrics(jnp.asarray(probs), jnp.asarray(data.y_test))
print({name: round(float(value), 4) for name, value in bma.items()})"""),
    ("md", """## Prune to a compact network

`posterior_mean_params` gives the median-probability network: posterior-mean weights (with the
horseshoe scales folded in) and the `keep` masks. `prune.compact` builds the same MLP class with
only the kept units; it computes exactly what the masked dense network computes."""),
    ("code", """weights, keep = posterior.posterior_mean_params(bnn, result.params)
keep = {name: np.asarray(mask) for name, mask in keep.items()}
compact_net, compact_params = prune.compact(bnn.net, weights, keep)
print("compact widths:", compact_net.widths)

x = jnp.asarray(data.x_test[:256])
masked_dense = bnn.functional.apply(weights, x)
np.testing.assert_allclose(compact_net(x), masked_dense, rtol=1e-4, atol=1e-4)
compact_accuracy = float(np.mean(np.argmax(compact_net(jnp.asarray(data.x_test)), -1) == data.y_test))
print(f"compact network test accuracy: {compact_accuracy:.4f}")"""),
    ("md", """## Compression report

Kept units per layer, parameters, FLOPs, and the measured latency of the jitted forward pass of
the dense and the compact network."""),
    ("code", """report = compression_report(bnn.net, compact_net, keep, data.input_shape, batch_sizes=(1, 256))
print(report.table())"""),
    ("md", """## Save and load

`save_compact` writes the architecture as JSON and the arrays as msgpack (no pickle); loading
builds an ordinary `nnx.Module` of the same class."""),
    ("code", """folder = tempfile.mkdtemp()
compact_io.save_compact(f"{folder}/compact", compact_net, metadata={"test_accuracy": compact_accuracy})
loaded = compact_io.load_compact(f"{folder}/compact")
print(type(loaded).__name__, loaded.widths)
np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(compact_net(x)))
print("the loaded network gives the same outputs")"""),
    ("md", """## Plots

The loss per datum, the kept units over epochs, and the inclusion probabilities: a good fit
leaves them close to 0 or 1."""),
    ("code", """epochs = [r["epoch"] for r in result.history]
fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
axes[0].plot(epochs, [r["nll"] for r in result.history], label="NLL")
axes[0].plot(epochs, [r["kl"] for r in result.history], label="KL / N")
axes[0].set(xlabel="epoch", yscale="log", title="loss terms per datum")
axes[0].legend()
for layer in result.history[0]["kept"]:
    axes[1].plot(epochs, [r["kept"][layer] for r in result.history], label=layer)
axes[1].set(xlabel="epoch", ylabel="kept units", title="kept units")
axes[1].legend()
for layer, gamma in posterior.inclusion_probs(bnn, result.params).items():
    axes[2].hist(np.asarray(gamma), bins=np.linspace(0, 1, 21), alpha=0.6, label=layer)
axes[2].axvline(0.5, color="k", lw=1)
axes[2].set(xlabel="inclusion probability", title="inclusion probabilities")
axes[2].legend()
fig.tight_layout()
plt.show()"""),
    ("md", """The same pipeline is one command: `sparse-bnn fit --data fashion-mnist --prior ss-ghs
--epochs 200 --lr 3e-3 --indicator-lr 1e-2 --rho-init -3 --shrink --out runs/fmnist`, which also
writes the plots, the report and the compact model (`--shrink` removes switched-off units while
training, so most epochs run on a network of a few dozen units)."""),
]

PRIORS = [
    ("md", """# Three shrinkage priors: SS-GL, SS-GHS and SS-IG

All three put a spike-and-slab on each hidden unit's group of weights; they differ in the slab:

* **SS-IG**: a plain Gaussian slab `N(0, sigma_0^2 I)`;
* **SS-GL**: a group-lasso slab (`tau2_lj ~ Gamma`, marginally `exp(-sqrt(lam2) ||w|| / sigma_0)`);
* **SS-GHS**: a regularised group-horseshoe slab (local and global half-Cauchy scales).

We fit each on scikit-learn's 8x8 digits (1,437 training images, 64 pixels) with an MLP
64-64-64-10 and compare which units each keeps and how hard it shrinks the others."""),
    ("code", SMALL_SWITCH),
    ("code", """import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from flax import nnx

from sparse_bnn.core import posterior
from sparse_bnn.data import load_dataset
from sparse_bnn.train import fit
from sparse_bnn.metrics import classification_metrics
from sparse_bnn.core.model import SparseBNN
from sparse_bnn.nets import MLP
from sparse_bnn.priors import get_prior

EPOCHS = 15 if SMALL else 200
WIDTHS = (32, 32) if SMALL else (64, 64)
PRIOR_NAMES = ("ss-ig", "ss-gl", "ss-ghs")
# The theory-driven lambda_l of math.md suits 60,000 examples and wide layers; with 1,437
# examples it switches every unit off. We give a fixed prior inclusion probability instead, and
# start the weights' posterior standard deviations at softplus(-3) ~ 0.05 rather than the default
# softplus(-6) ~ 0.0025: on small data the KL of such narrow factors pushes every indicator down
# together before the data can tell the units apart.
INCLUSION = 0.1
RHO_INIT = -3.0"""),
    ("code", """data = load_dataset("digits")
print(data.summary()["num_train"], "training and", data.summary()["num_test"], "test images")"""),
    ("md", """## Fit the three models

Same network, same seed, same optimiser, same prior inclusion probability `lambda = 0.1`;
only the slab changes."""),
    ("code", """fits = {}
for name in PRIOR_NAMES:
    net = MLP(data.input_dim, WIDTHS, data.num_classes, rngs=nnx.Rngs(0))
    bnn = SparseBNN(net, get_prior(name), n_data=len(data.x_train), inclusion=INCLUSION,
                     rho_init=RHO_INIT)
    fits[name] = fit(bnn, data.x_train, data.y_train, epochs=EPOCHS, batch_size=128,
                     optimizer=optax.adam(3e-3), progress=False)
    probs = posterior.predict(bnn, fits[name].params, data.x_test, n_samples=10)
    metrics = classification_metrics(jnp.asarray(probs), jnp.asarray(data.y_test))
    print(f"{name:7s} accuracy {float(metrics['accuracy']):.4f}  NLL {float(metrics['nll']):.4f}  "
          f"kept {fits[name].history[-1]['kept']}")"""),
    ("md", """## Inclusion probabilities per layer

A unit is kept when its inclusion probability exceeds 0.5."""),
    ("code", """fig, axes = plt.subplots(1, len(WIDTHS), figsize=(10, 3.5))
for name, result in fits.items():
    for ax, (layer, gamma) in zip(axes, posterior.inclusion_probs(result.bnn, result.params).items()):
        ax.hist(np.asarray(gamma), bins=np.linspace(0, 1, 21), alpha=0.5, label=name)
        ax.set(title=layer, xlabel="inclusion probability")
axes[0].legend()
fig.tight_layout()
plt.show()"""),
    ("md", """## Shrinkage profiles

For every hidden unit: the norm of its posterior-mean weight group, `E[scale] * ||mu_j||`,
against its inclusion probability. SS-IG can only switch a unit off; SS-GL and SS-GHS also
shrink the groups they keep, the horseshoe most selectively (large groups stay large)."""),
    ("code", """def group_norms(result, layer_index):
    \"\"\"E[scale_j] * ||[kernel[:, j], bias[j]]|| of each unit j of hidden layer layer_index.\"\"\"
    bnn, params = result.bnn, result.params
    kernel = np.asarray(params[f"layers.{layer_index}.kernel.loc"])
    bias = np.asarray(params[f"layers.{layer_index}.bias.loc"])
    norms = np.sqrt(np.sum(kernel**2, axis=0) + bias**2)
    scale = posterior.expected_weight_scales(bnn, params)[bnn.layers[layer_index].name]
    return norms * np.broadcast_to(np.asarray(scale), norms.shape)


fig, axes = plt.subplots(1, len(WIDTHS), figsize=(10, 3.5))
for name, result in fits.items():
    gammas = posterior.inclusion_probs(result.bnn, result.params)
    for index, ax in enumerate(axes):
        ax.scatter(np.asarray(gammas[f"dense{index}"]), group_norms(result, index), s=12, label=name)
        ax.set(title=f"dense{index}", xlabel="inclusion probability", ylabel="group norm", yscale="log")
axes[0].legend()
fig.tight_layout()
plt.show()"""),
    ("md", """## What each keeps

The kept units per layer, and how many of them the three priors agree on."""),
    ("code", """keeps = {name: {layer: np.asarray(k) for layer, k in
                posterior.keep_masks(result.bnn, result.params).items()} for name, result in fits.items()}
for layer in keeps[PRIOR_NAMES[0]]:
    counts = {name: int(keep[layer].sum()) for name, keep in keeps.items()}
    shared = int(np.logical_and.reduce([keep[layer] for keep in keeps.values()]).sum())
    print(f"{layer}: kept {counts}, kept by all three: {shared}")"""),
]

BMR = [
    ("md", """# Bayesian model reduction against hierarchical SVI

Instead of putting a spike-and-slab prior on the units, we can fit a simple **flat** model
(a Gaussian prior, one scale per layer) and ask, after every epoch, which reduced models the
data prefer. For a Gaussian posterior `N(mu, 1/pi)` and a prior shrunk from `N(0, sigma^2)` to
`N(0, g^2)`, the change of free energy `Delta F` is closed form (`math.md` §6), so scoring every
unit costs nothing; **node-wise** BMR sums `Delta F` over a unit's group and switches the unit
off when `Delta F > 0`, **element-wise** BMR prunes single weights.

Data: a random teacher network `y = silu(x W1) w2 + noise` with 10 inputs and **3** hidden
units. A student MLP with 50 hidden units should end up with about 3."""),
    ("code", SMALL_SWITCH),
    ("code", """import matplotlib.pyplot as plt
import numpy as np
import optax
from flax import nnx

from sparse_bnn.core import posterior
from sparse_bnn.data import make_teacher_regression
from sparse_bnn.train import fit
from sparse_bnn.core.model import SparseBNN
from sparse_bnn.nets import MLP
from sparse_bnn.priors import get_prior
from sparse_bnn.sparsify.reduction import fit_with_bmr
from sparse_bnn.sparsify.shrink import ShrinkSchedule

N_TRAIN = 300 if SMALL else 1000
EPOCHS, WARMUP = (12, 6) if SMALL else (100, 30)
HIDDEN = 50"""),
    ("code", """x, y, teacher = make_teacher_regression(N_TRAIN + 1000, in_features=10, hidden=3, noise=0.1, seed=0)
x_train, y_train, x_test, y_test = x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:]
print("teacher hidden units:", teacher["w1"].shape[1])


def student(prior_name):
    net = MLP(10, (HIDDEN,), 1, rngs=nnx.Rngs(0))
    return SparseBNN(net, get_prior(prior_name), n_data=N_TRAIN, likelihood="gaussian", rho_init=-3.0)


common = dict(epochs=EPOCHS, batch_size=20, optimizer=optax.adam(1e-2), progress=False)"""),
    ("md", """## Three ways to a sparse student

* flat model + node-wise BMR after each epoch from epoch `WARMUP` on;
* flat model + element-wise BMR (whole units go when all their weights are pruned);
* SS-GHS fitted by plain hierarchical SVI (`fit`);
* node-wise BMR again, with `shrink=`: the pruned units are removed physically and training
  continues on the narrower network (`result.bnn`), the way `--bmr nodewise --shrink` runs."""),
    ("code", """results = {
    "bmr-nodewise": fit_with_bmr(student("flat"), x_train, y_train, mode="nodewise", warmup_epochs=WARMUP, **common),
    "bmr-elementwise": fit_with_bmr(student("flat"), x_train, y_train, mode="elementwise", warmup_epochs=WARMUP, **common),
    "ss-ghs (SVI)": fit(student("ss-ghs"), x_train, y_train, **common),
    "bmr-nodewise+shrink": fit_with_bmr(student("flat"), x_train, y_train, mode="nodewise", warmup_epochs=WARMUP,
                                        shrink=ShrinkSchedule(bucket=4), **common),
}
for name, result in results.items():
    masks = result.state.masks
    means = posterior.predict_mean(result.bnn, result.params, x_test, masks=masks)
    rmse = float(np.sqrt(np.mean((means - y_test) ** 2)))
    keep = posterior.keep_masks(result.bnn, result.params, masks=masks)
    print(f"{name:20s} kept hidden units {int(np.sum(np.asarray(keep['dense0']))):3d} (teacher: 3)  "
          f"test RMSE {rmse:.4f} (noise 0.1)  physical width {result.bnn.layers[0].units}")"""),
    ("md", """## Kept units over training

BMR removes units only after the warm-up; SVI lowers the inclusion probabilities gradually."""),
    ("code", """fig, ax = plt.subplots(figsize=(6, 3.5))
for name, result in results.items():
    ax.plot([r["epoch"] for r in result.history], [r["kept"]["dense0"] for r in result.history], label=name)
ax.axhline(3, color="k", ls=":", label="teacher")
ax.set(xlabel="epoch", ylabel="kept hidden units", yscale="log")
ax.legend()
plt.show()"""),
    ("md", """## Element-wise sparsity

Element-wise BMR prunes single weights; a unit goes only when all its weights are pruned. On
this small, dense teacher (every input matters to every teacher unit) it prunes few weights
and so few units: the node-wise score, which weighs a whole group at once, is the one that
finds the teacher's size. The fraction of weights pruned after each reduction is in the history."""),
    ("code", """history = results["bmr-elementwise"].history
print("fraction of weights pruned after each reduction:",
      [round(r["pruned_fraction"], 3) for r in history if r["epoch"] >= WARMUP])"""),
]

CUSTOM = [
    ("md", """# Your own network and your own NumPyro model

Any Flax NNX module can be the network: the library traces it once and infers its *unit layers*
(which output features of which `nnx.Linear`/`nnx.Conv` form a prunable unit, and which kernels
read them); see `docs/guide/custom-modules.md`.

`SparseBNN` is a toolbox as well as a model: `bnn.sample_latents()` draws every latent site of
the prior, `bnn.effective_params(values)` turns them into the network's weights, and
`bnn.functional.apply(weights, x)` runs the Flax network. With these we write a **robust
regression** model: the same sparse network, but a Student-t likelihood with a learned scale, so
that a few gross outliers do not drag the fit.

We fit it with plain `numpyro.infer.SVI`, and compare with the library's Gaussian-likelihood
model fitted by `sparse_bnn.train.fit`."""),
    ("code", SMALL_SWITCH),
    ("code", """import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
from flax import nnx
from numpyro.infer import SVI

from sparse_bnn.core import posterior
from sparse_bnn.data import make_teacher_regression
from sparse_bnn.core.elbo import AnalyticKLELBO
from sparse_bnn.train import fit
from sparse_bnn.core.guide import softplus
from sparse_bnn.core.kl import kl_lognormal_halfnormal
from sparse_bnn.compact.io import load_compact, save_compact
from sparse_bnn.compact.prune import compact
from sparse_bnn.core.model import SparseBNN
from sparse_bnn.nets.declare import declare_units
from sparse_bnn.priors import get_prior

N_TRAIN = 300 if SMALL else 1000
STEPS = 300 if SMALL else 5000
EPOCHS = 10 if SMALL else 150"""),
    ("md", """## Data with outliers

The teacher regression of notebook 03, with 5% of the training targets replaced by gross
errors (the test targets stay clean)."""),
    ("code", """x, y, _ = make_teacher_regression(N_TRAIN + 1000, in_features=10, hidden=3, noise=0.1, seed=1)
x_train, y_train, x_test, y_test = x[:N_TRAIN], y[:N_TRAIN].copy(), x[N_TRAIN:], y[N_TRAIN:]
rng = np.random.default_rng(0)
outliers = rng.choice(N_TRAIN, N_TRAIN // 20, replace=False)
y_train[outliers] += rng.choice([-1.0, 1.0], size=(len(outliers), 1)) * rng.uniform(5, 10, size=(len(outliers), 1))
print(f"{len(outliers)} outliers among {N_TRAIN} training targets")"""),
    ("md", """## The network: a plain NNX module

A small residual MLP, written as any Flax NNX module, with nothing of this library in it.
`declare_units` traces it on a few inputs and finds its unit layers: the skip connection adds
the outputs of `inp` and `hidden`, so their units are one group (removing unit `j` removes it
from both, and from the rows of `hidden` and `out` that read it). It then checks that the
compact network equals the masked one, and would refuse, naming the layer, a design that does
not commute with pruning (a `LayerNorm` across the units, for one)."""),
    ("code", """class SkipNet(nnx.Module):
    \"\"\"x [B, in_features] -> silu(inp) + silu(hidden(.)) -> out: [B, 1].\"\"\"

    def __init__(self, in_features, width, *, rngs):
        self.in_features, self.width = in_features, width   # kept: the saved config rebuilds it from them
        self.inp = nnx.Linear(in_features, width, rngs=rngs)
        self.hidden = nnx.Linear(width, width, rngs=rngs)
        self.out = nnx.Linear(width, 1, rngs=rngs)

    def __call__(self, x):
        h = nnx.silu(self.inp(x))
        h = h + nnx.silu(self.hidden(h))
        return self.out(h)


net = declare_units(SkipNet(10, 50, rngs=nnx.Rngs(0)), x_train[:8])
for layer in net.unit_layers():
    print(f"{layer.name:6s} units {layer.units:3d}  prunable {layer.prunable!s:5s}  "
          f"members {[(m.path, m.axis) for m in layer.members]}")"""),
    ("md", """## The model and the guide

`bnn` is built with `likelihood="gaussian"` and a fixed `noise`, only so that it has no noise
site of its own: we never call its likelihood. Our model adds one latent, the Student-t scale
`s ~ HalfNormal(1)`, and our guide adds its log-normal factor to `bnn.guide`."""),
    ("code", """bnn = SparseBNN(net, get_prior("ss-ghs"), n_data=N_TRAIN, likelihood="gaussian", noise=1.0)
DEGREES_OF_FREEDOM = 3.0


def robust_model(x, y=None):
    \"\"\"x [B, 10], y [B, 1] -> Student-t regression on the sparse network's output.\"\"\"
    values = bnn.sample_latents()                     # indicators, scales, w~ from the prior
    mean = bnn.functional.apply(bnn.effective_params(values), x)[:, 0]
    scale = numpyro.sample("t_scale", dist.HalfNormal(1.0))
    with numpyro.plate("data", N_TRAIN, subsample_size=x.shape[0]):
        numpyro.sample("y", dist.StudentT(DEGREES_OF_FREEDOM, mean, scale),
                       obs=None if y is None else y[:, 0])


def robust_guide(x, y=None):
    bnn.guide(x)                                      # the structured mean field of the library
    loc = numpyro.param("t_scale.loc", jnp.log(0.3))
    rho = numpyro.param("t_scale.rho", -3.0)
    numpyro.sample("t_scale", dist.LogNormal(loc, softplus(rho)))"""),
    ("md", """## The ELBO

`bnn.elbo()` is `AnalyticKLELBO(bnn.kl)`: one joint sample for the likelihood and the KL in closed
form. Our extra site has a closed-form KL too (log-normal against half-normal), so we add it.
(For a site without one, `numpyro.infer.Trace_ELBO` would estimate everything by Monte Carlo.)"""),
    ("code", """def robust_kl(params):
    extra = kl_lognormal_halfnormal(params["t_scale.loc"], softplus(params["t_scale.rho"]), 1.0)
    return bnn.kl(params) + extra


svi = SVI(robust_model, robust_guide, optax.adam(1e-2), AnalyticKLELBO(robust_kl))
svi_result = svi.run(jax.random.PRNGKey(0), STEPS, jnp.asarray(x_train), jnp.asarray(y_train),
                     progress_bar=False)
robust_params = svi_result.params
print(f"final loss per datum {float(svi_result.losses[-1]) / N_TRAIN:.3f}, "
      f"t scale ~ {float(jnp.exp(robust_params['t_scale.loc'])):.3f}")"""),
    ("md", """`posterior` works on our parameters as they are (it only reads `bnn`'s sites)."""),
    ("code", """def evaluate(name, model_bnn, params):
    means = posterior.predict_mean(model_bnn, params, x_test)
    rmse = float(np.sqrt(np.mean((means - y_test) ** 2)))
    kept = int(np.sum(np.asarray(posterior.keep_masks(model_bnn, params)["inp"])))
    print(f"{name:28s} test RMSE {rmse:.4f}   kept hidden units {kept} (teacher: 3)")


evaluate("Student-t (custom, SVI)", bnn, robust_params)"""),
    ("md", """## The library's Gaussian model, for comparison

Same network and prior, Gaussian likelihood with a learned noise, fitted with `fit`. The outliers
inflate its noise estimate and pull its fit. (`example_input` declares a fresh `SkipNet` on the way.)"""),
    ("code", """gaussian_bnn = SparseBNN(SkipNet(10, 50, rngs=nnx.Rngs(0)), get_prior("ss-ghs"), n_data=N_TRAIN,
                         likelihood="gaussian", example_input=x_train[:8])
gaussian = fit(gaussian_bnn, x_train, y_train, epochs=EPOCHS, batch_size=N_TRAIN // 10,
               optimizer=optax.adam(1e-2), progress=False)
evaluate("Gaussian (library, fit)", gaussian_bnn, gaussian.params)
print(f"learned Gaussian noise {posterior.noise_scale(gaussian_bnn, gaussian.params):.3f} (true 0.1)")"""),
    ("md", """## A smaller SkipNet, saved and loaded

`compact` keeps the units the robust posterior includes and builds a `SkipNet` of that width.
`save_compact` stores the class's import path and constructor arguments with the arrays, so
`load_compact` rebuilds it; in another process the class must live in an importable module
(here it lives in the notebook, so we load it in the same process)."""),
    ("code", """import tempfile

weights, keep = posterior.posterior_mean_params(bnn, robust_params)   # median-probability model
small, _ = compact(bnn.net, weights, keep)
print("compact widths:", small.config["units"])
folder = tempfile.mkdtemp()
save_compact(folder, small)
loaded = load_compact(folder)
print(type(loaded).__name__, "max output difference after loading:",
      float(jnp.max(jnp.abs(loaded(jnp.asarray(x_test)) - small(jnp.asarray(x_test))))))"""),
    ("md", """The same recipe works for any likelihood or extra latent: draw the network's latents with
`bnn.sample_latents()`, build the weights with `bnn.effective_params`, and extend `bnn.guide`
and `bnn.kl` with your own sites."""),
]

NOTEBOOKS = {
    "01_quickstart.ipynb": QUICKSTART,
    "02_priors.ipynb": PRIORS,
    "03_bmr.ipynb": BMR,
    "04_custom_model.ipynb": CUSTOM,
}


def build(cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    notebook.metadata["language_info"] = {"name": "python"}
    for kind, source in cells:
        cell = nbformat.v4.new_markdown_cell(source) if kind == "md" else nbformat.v4.new_code_cell(source)
        cell.pop("id", None)
        notebook.cells.append(cell)
    return notebook


def main() -> None:
    for name, cells in NOTEBOOKS.items():
        notebook = build(cells)
        for index, cell in enumerate(notebook.cells):
            cell["id"] = f"cell-{index}"
        nbformat.validate(notebook)
        nbformat.write(notebook, HERE / name)
        print(f"wrote {HERE / name}")


if __name__ == "__main__":
    main()

"""Exported models (sparse_bnn.compact.export, ``sparse-bnn export``): one ``jax.export`` file that plain JAX
runs, at any batch size, without sparse_bnn, and that computes what ``sparse-bnn predict`` computes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from sparse_bnn.cli import main
from sparse_bnn.compact.deploy import predict_run
from sparse_bnn.compact.export import export, load_exported
from sparse_bnn.compact.io import compact_outputs, save_compact
from sparse_bnn.nets import MLP
from sparse_bnn.nets.base import flatten_paths

FEATURES, CLASSES, SAMPLES = 6, 3, 4


def fake_run(folder: Path, task: str = "classification") -> tuple[Path, nnx.Module]:
    """A finished run directory: config.json, metrics.json and compact/ (an MLP with posterior
    samples and the preprocessing of tabular data given in units twice the network's)."""
    rng = np.random.default_rng(0)
    outputs = CLASSES if task == "classification" else 1
    net = MLP(FEATURES, [5, 4], outputs, rngs=nnx.Rngs(1))
    params = flatten_paths(nnx.to_pure_dict(nnx.state(net, nnx.Param)))
    samples = {p: np.asarray(v)[None] + 0.3 * rng.normal(size=(SAMPLES, *np.shape(v))).astype(np.float32)
               for p, v in params.items()}
    preprocessing = {"task": task, "input_shape": [FEATURES], "num_classes": CLASSES if task == "classification"
                     else None, "raw_divisor": 2.0, "mean": rng.normal(size=FEATURES).tolist(),
                     "std": rng.uniform(0.5, 2.0, FEATURES).tolist(), "y_mean": None, "y_std": None,
                     "input_min": None, "input_max": None}
    noise = None
    if task == "regression":
        preprocessing.update(y_mean=[3.0], y_std=[2.5])
        noise = 0.4
    run = folder / "run"
    save_compact(run / "compact", net, params_samples=samples,
                 metadata={"task": task, "noise_std": noise, "preprocessing": preprocessing})
    (run / "config.json").write_text(json.dumps({"run": {"data": "digits"}}))
    (run / "metrics.json").write_text(json.dumps({"task": task}))
    return run, net


def raw_inputs(n: int, seed: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, 3.0, size=(n, FEATURES)).astype(np.float32)


def numpy_forward(net: MLP, x: np.ndarray, preprocessing: dict) -> np.ndarray:
    """The MLP's logits by hand: standardise, then dense layers with SiLU between them."""
    h = (x / preprocessing["raw_divisor"] - np.asarray(preprocessing["mean"])) / np.asarray(preprocessing["std"])
    for i, layer in enumerate(net.layers):
        h = h @ np.asarray(layer.kernel[...]) + np.asarray(layer.bias[...])
        if i < len(net.layers) - 1:
            h = h / (1 + np.exp(-h))
    return h


def run_without_sparse_bnn(model_file: Path, inputs: dict[str, np.ndarray], folder: Path) -> dict:
    """Run the exported model in a fresh interpreter where ``import sparse_bnn`` fails."""
    np.savez(folder / "inputs.npz", **inputs)
    code = f"""
import sys
sys.modules["sparse_bnn"] = None  # any import of sparse_bnn now raises ImportError
import numpy as np
from jax import export
model = export.deserialize(bytearray(open({str(model_file)!r}, "rb").read()))
inputs = np.load({str(folder / 'inputs.npz')!r})
results = {{}}
for name in inputs.files:
    out = model.call(inputs[name])
    for i, value in enumerate(out if isinstance(out, tuple) else (out,)):
        results[f"{{name}}_{{i}}"] = np.asarray(value)
assert not [m for m in sys.modules if m.startswith("sparse_bnn.")]
np.savez({str(folder / 'outputs.npz')!r}, **results)
"""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    return dict(np.load(folder / "outputs.npz"))


def test_the_exported_median_network_runs_with_plain_jax_at_any_batch_size(tmp_path):
    run, net = fake_run(tmp_path)
    written = export(run, tmp_path / "model.jax")
    assert written.outputs == "probs" and written.samples is None and written.input_shape == (FEATURES,)
    assert "batch" in str(written.exported.in_avals[0].shape)
    x7, x2 = raw_inputs(7), raw_inputs(2, seed=3)
    got = run_without_sparse_bnn(tmp_path / "model.jax", {"seven": x7, "two": x2}, tmp_path)
    preprocessing = json.loads((run / "compact" / "architecture.json").read_text())["metadata"]["preprocessing"]
    for name, x in (("seven", x7), ("two", x2)):
        logits = numpy_forward(net, x.astype(np.float64), preprocessing)
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        np.testing.assert_allclose(got[f"{name}_0"], probs, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(got[f"{name}_0"], predict_run(run, x, samples=False)["probs"], rtol=1e-5, atol=1e-7)


def test_the_exported_average_over_samples_is_predicts_default(tmp_path):
    run, _ = fake_run(tmp_path)
    written = export(run, tmp_path / "bma.jax", samples=True)
    assert written.samples == SAMPLES
    x = raw_inputs(9)
    probs = np.asarray(load_exported(tmp_path / "bma.jax").call(x))
    expected = predict_run(run, x)["probs"]
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-7)
    assert np.abs(probs - predict_run(run, x, samples=False)["probs"]).max() > 1e-3  # not the median network


def test_an_exported_regression_gives_mean_and_std_in_the_targets_units(tmp_path):
    run, _ = fake_run(tmp_path, "regression")
    x = raw_inputs(5)
    for samples in (False, True):
        export(run, tmp_path / "reg.jax", samples=samples)
        mean, std = (np.asarray(v) for v in load_exported(tmp_path / "reg.jax").call(x))
        expected = predict_run(run, x, samples=samples)
        np.testing.assert_allclose(mean, expected["mean"], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(std, expected["std"], rtol=1e-5, atol=1e-6)
    median_std = predict_run(run, x, samples=False)["std"]
    np.testing.assert_allclose(median_std, 0.4 * 2.5, rtol=1e-6)


def test_a_module_exports_its_raw_outputs(tmp_path):
    net = MLP(FEATURES, [3], 2, rngs=nnx.Rngs(4))
    x = raw_inputs(4)
    export(net, tmp_path / "net.jax", input_shape=(FEATURES,), platforms=("cpu",))
    np.testing.assert_allclose(np.asarray(load_exported(tmp_path / "net.jax").call(x)), compact_outputs(net, x),
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="input shape"):
        export(net, tmp_path / "net.jax")


def test_cli_export(tmp_path, capsys):
    run, _ = fake_run(tmp_path)
    out = tmp_path / "cli.jax"
    assert main(["export", str(run), "--format", "stablehlo", "--out", str(out), "--platforms", "cpu"]) == 0
    assert load_exported(out).platforms == ("cpu",)
    x = raw_inputs(3)
    np.testing.assert_allclose(np.asarray(load_exported(out).call(x)), predict_run(run, x, samples=False)["probs"],
                               rtol=1e-5, atol=1e-7)
    assert main(["export", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    assert "nowhere" in capsys.readouterr().err
    assert main(["export", str(run), "--out", str(tmp_path / "no" / "folder.jax")]) == 2
    with pytest.raises(SystemExit) as exit_:
        main(["export", str(run), "--format", "tflite", "--out", str(out)])
    assert exit_.value.code == 2


def test_the_artifact_is_lowered_for_the_accelerator_platforms_too(tmp_path):
    run, _ = fake_run(tmp_path)
    exported = export(run, tmp_path / "model.jax").exported
    assert set(exported.platforms) >= {"cpu", "cuda", "tpu"}
    assert jax.devices()[0].platform in exported.platforms

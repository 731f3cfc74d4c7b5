"""Predictions of a finished run on new examples: sparse_bnn.compact.deploy and ``sparse-bnn predict``.

The examples come in the data set's own units; the run's recorded preprocessing must turn them
into exactly the inputs it was tested on, so predictions reproduce the run's own test metrics.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from sparse_bnn.data.sources import load_dataset, make_teacher_regression
from sparse_bnn.data.preprocess import prepare_inputs
from sparse_bnn.compact.deploy import predict_run, read_inputs, write_predictions
from sparse_bnn.experiment.run import RunConfig, run_experiment
from sparse_bnn.experiment.evaluate import evaluate_run


def digit_images() -> dict[str, np.ndarray]:
    """scikit-learn's digits as 8-bit images ``[N, 8, 8, 1]`` (0..16 -> 0..240), fixed test split."""
    from sklearn.datasets import load_digits
    bunch = load_digits()
    images = (bunch.images * 15).astype(np.uint8)[..., None]
    return {"x": images[:1200], "y": bunch.target[:1200], "x_test": images[1200:], "y_test": bunch.target[1200:]}


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("deploy")
    arrays = digit_images()
    np.savez(folder / "digits_images.npz", **arrays)
    config = RunConfig.flat(out=str(folder / "run"), data=str(folder / "digits_images.npz"), net="mlp", widths=[24, 16],
                       prior="ss-ghs", epochs=8, batch_size=64, lr=1e-2, rho_init=-3.0, samples=4, latency=False)
    metrics = run_experiment(config, progress=False)
    return folder / "run", arrays, metrics


def test_prepare_inputs_repeats_the_training_preprocessing(tmp_path):
    arrays = digit_images()
    np.savez(tmp_path / "images.npz", **arrays)
    dataset = load_dataset(tmp_path / "images.npz")
    recipe = json.loads(json.dumps(dataset.preprocessing()))  # as stored with the compact model
    assert recipe["raw_divisor"] == 255.0 and np.ndim(recipe["mean"]) == 0
    raw = arrays["x_test"]
    np.testing.assert_array_equal(prepare_inputs(raw, recipe), dataset.x_test)
    np.testing.assert_array_equal(prepare_inputs(raw[..., 0], recipe), dataset.x_test)  # no channel axis
    np.testing.assert_array_equal(prepare_inputs(raw.reshape(len(raw), -1), recipe), dataset.x_test)  # flat
    expected = (raw / 255.0 - np.mean(arrays["x"] / 255.0)) / np.std(arrays["x"] / 255.0)
    np.testing.assert_allclose(prepare_inputs(raw, recipe), expected, atol=1e-5)

    rng = np.random.default_rng(0)
    features = {"x": rng.normal(5.0, 3.0, (80, 4)) * [1, 10, 100, 1000], "y": rng.integers(0, 3, 80)}
    features.update(x_test=rng.normal(5.0, 3.0, (20, 4)) * [1, 10, 100, 1000], y_test=rng.integers(0, 3, 20))
    np.savez(tmp_path / "table.npz", **features)
    dataset = load_dataset(tmp_path / "table.npz")
    recipe = json.loads(json.dumps(dataset.preprocessing()))
    assert recipe["raw_divisor"] == 1.0 and len(recipe["mean"]) == 4
    np.testing.assert_array_equal(prepare_inputs(features["x_test"], recipe), dataset.x_test)


def test_prepare_inputs_refuses_bad_examples():
    recipe = {"input_shape": [8, 8, 1], "raw_divisor": 255.0, "mean": 0.3, "std": 0.4}
    with pytest.raises(ValueError, match=r"examples of shape \(8, 7, 1\), but the model takes \(8, 8, 1\)"):
        prepare_inputs(np.zeros((3, 8, 7, 1)), recipe, "new.npy")
    with pytest.raises(ValueError, match="new.npy: the inputs holds 1 NaN"):
        prepare_inputs(np.where(np.arange(192).reshape(3, 8, 8) == 5, np.nan, 1.0), recipe, "new.npy")
    rgb = {"input_shape": [4, 4, 3], "raw_divisor": 255.0, "mean": None, "std": None}
    with pytest.raises(ValueError, match="model takes"):  # flattened colour images: the order is ambiguous
        prepare_inputs(np.zeros((2, 48)), rgb)


def test_predictions_reproduce_the_runs_test_metrics(image_run):
    run, arrays, metrics = image_run
    median = predict_run(run, arrays["x_test"], samples=False)
    assert set(median) == {"label", "entropy", "probs"}
    y = arrays["y_test"]
    probs = median["probs"]
    assert np.mean(median["label"] == y) == pytest.approx(metrics["compact"]["accuracy"], abs=1e-6)
    nll = -np.mean(np.log(probs[np.arange(len(y)), y]))
    assert nll == pytest.approx(metrics["compact"]["nll"], rel=1e-4)

    averaged = predict_run(run, arrays["x_test"])
    bma = evaluate_run(run)["compact_bma"]
    probs = averaged["probs"]
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-6)
    assert np.mean(averaged["label"] == y) == pytest.approx(bma["accuracy"], abs=1e-6)
    assert -np.mean(np.log(probs[np.arange(len(y)), y])) == pytest.approx(bma["nll"], rel=1e-4)
    entropy, information = averaged["entropy"], averaged["mutual_information"]
    np.testing.assert_allclose(entropy, -np.sum(probs * np.log(probs), -1), rtol=1e-6)
    assert np.all(entropy <= np.log(10) + 1e-9) and np.all(information >= 0) and np.all(information <= entropy)
    assert information.max() > 1e-3  # the samples disagree somewhere


def test_runs_saved_without_their_preprocessing_recompute_it(image_run, tmp_path):
    run, arrays, _ = image_run
    old = tmp_path / "old"
    shutil.copytree(run, old)
    architecture = old / "compact" / "architecture.json"
    saved = json.loads(architecture.read_text())
    del saved["metadata"]["preprocessing"]
    architecture.write_text(json.dumps(saved))
    recomputed = predict_run(old, arrays["x_test"])["probs"]
    np.testing.assert_array_equal(recomputed, predict_run(run, arrays["x_test"])["probs"])


def test_regression_predictions_come_in_the_targets_units(tmp_path):
    config = RunConfig.flat(out=str(tmp_path / "run"), data="teacher", net="mlp", widths=[8], prior="ss-ghs", epochs=30,
                       batch_size=50, n_train=300, n_test=100, lr=1e-2, rho_init=-3.0, samples=4, latency=False)
    metrics = run_experiment(config, progress=False)
    x, y, _ = make_teacher_regression(400, seed=0)  # the run's generator: train first, then test
    x_test, y_test = x[300:], y[300:].reshape(-1, 1)
    median = predict_run(tmp_path / "run", x_test, samples=False)
    rmse = np.sqrt(np.mean((median["mean"] - y_test) ** 2))
    assert rmse == pytest.approx(metrics["compact"]["rmse_original_units"], rel=1e-4)
    y_std = float(np.std(y[:300]))
    np.testing.assert_allclose(median["std"], metrics["noise_std"] * y_std, rtol=1e-5)
    averaged = predict_run(tmp_path / "run", x_test)
    assert np.all(averaged["std"] >= median["std"] * (1 - 1e-6))  # the sampled means add their spread


def test_read_inputs_and_write_predictions(tmp_path):
    images = digit_images()["x_test"][:5]
    np.save(tmp_path / "a.npy", images)
    np.savez(tmp_path / "b.npz", pixels=images)
    np.savetxt(tmp_path / "c.csv", images.reshape(5, -1), delimiter=",", header=",".join(f"f{i}" for i in range(64)),
               comments="")
    for name in ("a.npy", "b.npz"):
        np.testing.assert_array_equal(read_inputs(tmp_path / name), images)
    np.testing.assert_array_equal(read_inputs(tmp_path / "c.csv"), images.reshape(5, -1))
    np.savez(tmp_path / "two.npz", a=images, b=images)
    with pytest.raises(ValueError, match="name the inputs 'x'"):
        read_inputs(tmp_path / "two.npz")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_inputs(tmp_path / "missing.npy")

    predictions = {"label": np.array([1, 0]), "entropy": np.array([0.5, 0.25]),
                   "probs": np.array([[0.2, 0.8], [1.0, 0.0]])}
    write_predictions(tmp_path / "p.csv", predictions)
    rows = list(csv.reader(open(tmp_path / "p.csv")))
    assert rows == [["label", "entropy", "p0", "p1"], ["1", "0.5", "0.2", "0.8"], ["0", "0.25", "1", "0"]]
    write_predictions(tmp_path / "p.npz", predictions)
    with np.load(tmp_path / "p.npz") as saved:
        np.testing.assert_array_equal(saved["probs"], predictions["probs"])


def test_cli_predict(image_run, tmp_path):
    run, arrays, _ = image_run
    np.save(tmp_path / "new.npy", arrays["x_test"][:50])
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    command = [sys.executable, "-m", "sparse_bnn", "predict", str(run)]
    result = subprocess.run(command + [str(tmp_path / "new.npy")], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(result.stdout.splitlines()))
    expected = predict_run(run, arrays["x_test"][:50])
    assert [int(row["label"]) for row in rows] == expected["label"].tolist()
    assert list(rows[0]) == ["label", "entropy", "mutual_information"] + [f"p{k}" for k in range(10)]

    np.save(tmp_path / "many.npy", np.concatenate([arrays["x_test"]] * 3))  # more CSV than a pipe buffers
    reader = subprocess.Popen(command + [str(tmp_path / "many.npy")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env)
    assert reader.stdout.readline().startswith("label,")
    reader.stdout.close()  # as `| head -1` does
    assert reader.wait(timeout=300) == 0
    assert "Traceback" not in reader.stderr.read()

    np.save(tmp_path / "wrong.npy", arrays["x_test"][:5, :7])
    result = subprocess.run(command + [str(tmp_path / "wrong.npy"), "--out", str(tmp_path / "p.csv")],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 2
    assert "examples of shape (7, 8, 1), but the model takes (8, 8, 1)" in result.stderr
    assert not (tmp_path / "p.csv").exists()

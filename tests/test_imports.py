"""The package's import structure: the model core has no import cycle, and deployment loads no
training module."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import sparse_bnn
from sparse_bnn.compact.io import save_compact
from sparse_bnn.nets import MLP
from sparse_bnn.nets.base import flatten_paths

PACKAGE = Path(sparse_bnn.__file__).parent
CORE = ("sparse_bnn.core.spec", "sparse_bnn.core.model", "sparse_bnn.core.guide", "sparse_bnn.core.elbo")
TRAINING = ("sparse_bnn.fit", "sparse_bnn.train", "sparse_bnn.sparsify", "sparse_bnn.sparsify.bmr",
            "sparse_bnn.sparsify.scores", "sparse_bnn.sparsify.reduction", "sparse_bnn.sparsify.slicing",
            "sparse_bnn.sparsify.shrink", "sparse_bnn.experiment.run", "sparse_bnn.experiment.evaluate",
            "sparse_bnn.core.model", "sparse_bnn.core.guide", "sparse_bnn.core.elbo",
            # the old top-level paths (shims) of training modules
            "sparse_bnn.shrink", "sparse_bnn.reduction", "sparse_bnn.run", "sparse_bnn.model", "sparse_bnn.guide",
            "sparse_bnn.elbo", "numpyro", "optax")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_imports() -> dict[str, set[str]]:
    """``{module: sparse_bnn modules it imports}``, from the source: every ``import`` statement,
    at module level, inside functions and under ``TYPE_CHECKING`` alike."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name in modules)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in modules:
                deps.add(node.module)
                deps.update(f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules)
        graph[name] = deps - {name, "sparse_bnn"}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (as a path that ends where it starts), or ``None``."""
    state: dict[str, str] = {}

    def visit(node, path):
        state[node] = "open"
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == "open":
                return path[path.index(dep):] + [dep]
            if dep not in state and (cycle := visit(dep, path + [dep])):
                return cycle
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return None


def fresh_python(code: str) -> str:
    """Run ``code`` in a fresh interpreter (CPU JAX) and return its standard output."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_model_guide_elbo_and_spec_form_no_cycle():
    graph = package_imports()
    core = {name: graph[name] & set(CORE) for name in CORE}
    assert find_cycle(core) is None, core
    assert core["sparse_bnn.core.spec"] == set()
    for side in ("sparse_bnn.core.guide", "sparse_bnn.core.elbo"):
        assert core[side] == {"sparse_bnn.core.spec"}, (side, core[side])


def test_package_has_no_import_cycle():
    cycle = find_cycle(package_imports())
    assert cycle is None, " -> ".join(cycle)


def test_guide_and_elbo_load_without_the_model():
    """At run time too: importing the guide or the ELBO loads neither the model nor the other."""
    for module, absent in (("sparse_bnn.core.guide", ["sparse_bnn.core.model", "sparse_bnn.core.elbo"]),
                           ("sparse_bnn.core.elbo", ["sparse_bnn.core.model", "sparse_bnn.core.guide"]),
                           ("sparse_bnn.core.spec", list(CORE[1:]))):
        code = (f"import importlib, json, sys; importlib.import_module({module!r}); "
                f"print(json.dumps(sorted(m for m in {absent!r} if m in sys.modules)))")
        assert json.loads(fresh_python(code)) == [], module


def saved_run(run_dir: Path) -> np.ndarray:
    """A finished run directory by hand (config, metrics, compact model with 3 samples and its
    preprocessing); returns examples ``[5, 4]`` for it."""
    net = MLP(4, (3,), 2, rngs=nnx.Rngs(0))
    params = flatten_paths(nnx.to_pure_dict(nnx.state(net, nnx.Param)))
    samples = {p: jnp.stack([v, 0.5 * v, -v]) for p, v in params.items()}
    preprocessing = {"task": "classification", "input_shape": [4], "num_classes": 2, "raw_divisor": 1.0,
                     "mean": None, "std": None, "y_mean": None, "y_std": None}
    save_compact(run_dir / "compact", net, params_samples=samples, metadata={"preprocessing": preprocessing})
    (run_dir / "config.json").write_text(json.dumps({"run": {"data": "digits", "out": str(run_dir)}}))
    (run_dir / "metrics.json").write_text("{}")
    return np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)


def test_predicting_with_a_saved_run_loads_no_training_module(tmp_path):
    """``import sparse_bnn.compact.deploy`` and ``predict_run`` (samples and median network) leave the
    fitting stack unloaded: no ``train``/``sparsify``/``experiment.run``, no NumPyro."""
    x = saved_run(tmp_path)
    np.save(tmp_path / "x.npy", x)
    forbidden = list(TRAINING)
    if json.loads(fresh_python("import json, sys; import flax.nnx; print(json.dumps('optax' in sys.modules))")):
        forbidden.remove("optax")  # Flax NNX imports optax itself (nnx.Optimizer); not ours to avoid
    code = ("import json, sys\n"
            "import numpy as np\n"
            "from sparse_bnn.compact.deploy import predict_run\n"
            f"loaded = sorted(m for m in {forbidden!r} if m in sys.modules)\n"
            f"x = np.load({str(tmp_path / 'x.npy')!r})\n"
            f"bma = predict_run({str(tmp_path)!r}, x)\n"
            f"median = predict_run({str(tmp_path)!r}, x, samples=False)\n"
            f"after = sorted(m for m in {forbidden!r} if m in sys.modules)\n"
            "print(json.dumps({'import': loaded, 'predict': after, 'bma': bma['probs'].tolist(),\n"
            "                  'median': median['probs'].tolist()}))\n")
    result = json.loads(fresh_python(code).strip().splitlines()[-1])
    assert result["import"] == [] and result["predict"] == [], result
    assert np.asarray(result["bma"]).shape == (5, 2) and np.asarray(result["median"]).shape == (5, 2)
    np.testing.assert_allclose(np.sum(result["bma"], axis=1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("name", ["SparseBNN", "Masks", "fit_shrinking", "fit_with_bmr", "predict_run",
                                  "load_compact", "get_prior"])
def test_package_exports_still_resolve(name):
    assert getattr(sparse_bnn, name) is not None

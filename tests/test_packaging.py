"""The package builds into a wheel and an sdist, with the license and no deprecation warnings."""
from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(importlib.util.find_spec("build") is None,
                                reason="needs the 'build' package (the test extra installs it)")


def test_wheel_and_sdist_build_without_deprecation_warnings(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "sparse_bnn", source / "sparse_bnn",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    done = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--wheel", "--sdist",
                           "--outdir", str(tmp_path / "dist"), str(source)],
                          capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert "deprecat" not in output.lower(), [line for line in output.splitlines() if "eprecat" in line]
    wheels = list((tmp_path / "dist").glob("sparse_bnn-*.whl"))
    sdists = list((tmp_path / "dist").glob("sparse_bnn-*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, sorted(p.name for p in (tmp_path / "dist").iterdir())
    with zipfile.ZipFile(wheels[0]) as wheel:
        names = wheel.namelist()
        metadata = wheel.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "sparse_bnn/core/model.py" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), names[-10:]
    assert "License-Expression: Apache-2.0" in metadata
    assert "orbax" not in metadata
    with tarfile.open(sdists[0]) as sdist:
        members = sdist.getnames()
    assert any(m.endswith("/LICENSE") for m in members)
    assert any(m.endswith("/sparse_bnn/cli.py") for m in members)

"""RESULTS.md, docs/results.md and the README's headline table are what the JSONs in
benchmarks/results/ render to (scripts/render_results.py), so a stale page fails."""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("render_results", ROOT / "scripts" / "render_results.py")
render = importlib.util.module_from_spec(spec)
spec.loader.exec_module(render)


@pytest.mark.parametrize("page", ["RESULTS.md", "docs/results.md", "README.md"])
def test_rendered_pages_are_up_to_date(page):
    expected = render.rendered(ROOT)[ROOT / page]
    assert (ROOT / page).read_text() == expected, (
        f"{page} is out of date with benchmarks/results/*.json: run python scripts/render_results.py")


def test_headline_figures_come_from_the_jsons():
    results = render.load_results()
    row = render.find_row(results, "fmnist_cpu_threshold005", "mlp", "ss-ghs")
    base = render.find_row(results, "shrink_threshold005", None, "dense")
    table = render.headline(results)
    line = next(l for l in table.splitlines() if l.startswith("| SS-GHS, shrinking |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[1] == f"{100 * row['accuracy']:.1f}%"
    assert cells[2] == f"{row['ece']:.3f}"
    assert cells[-1] == f"{row['training_seconds'] / base['seconds']:.2f}x"
    # the published reference rows stand beside ours
    assert "| SS-IG, published (1200 epochs) | 84.52% | - | 9.09% |" in table
    assert "| SS-IG, published (1200 epochs) | 87.66% | - | 5.64% |" in table
    assert "90.48%" in table and "87.55%" in table


def test_a_changed_json_makes_the_pages_stale(tmp_path):
    (tmp_path / "benchmarks").mkdir()
    shutil.copytree(ROOT / "benchmarks" / "results", tmp_path / "benchmarks" / "results",
                    ignore=shutil.ignore_patterns("*.png", "*.md"))
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    before = render.rendered(tmp_path)
    path = tmp_path / "benchmarks" / "results" / "fmnist_cpu_threshold005.json"
    data = json.loads(path.read_text())
    data["rows"][0]["accuracy"] = 0.5
    path.write_text(json.dumps(data))
    after = render.rendered(tmp_path)
    for name in ("RESULTS.md", "README.md"):
        assert before[tmp_path / name] != after[tmp_path / name]
    assert "50.0%" in after[tmp_path / "RESULTS.md"]


def test_missing_provenance_reads_unknown():
    fields = render.provenance("fmnist_cpu", {"date": "D", "machine": "M", "cpu_count": 2})
    assert fields == {"command": "unknown (`benchmarks/fmnist.py`)", "date": "D", "machine": "M, 2 cores",
                      "version": "unknown", "jax": "unknown", "device": "unknown"}
    recorded = render.provenance("scaling", {"command": "python x.py", "sparse_bnn_version": "0.1.0"})
    assert recorded["command"] == "`python x.py`" and recorded["version"] == "0.1.0"
    assert recorded["date"] == "unknown" and recorded["machine"] == "unknown"


def test_a_json_without_a_renderer_is_refused():
    with pytest.raises(ValueError, match="no renderer"):
        render.family("mystery_run")

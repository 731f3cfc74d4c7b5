"""The user's documentation and the code say what things do, not when or how they came about:
no dates, no "session", no "closing note", no "issue <number>" in README.md, docs/, notebooks/
or sparse_bnn/. History belongs in CHANGELOG.md; dated measurements in the rendered results pages.
"""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCOPE = ["README.md", "docs", "notebooks", "sparse_bnn"]
SUFFIXES = {".md", ".py", ".ipynb", ".yml", ".yaml", ".txt", ".json"}
# The allowed exceptions: the changelog (its page only includes CHANGELOG.md) and the results
# pages, whose rows state the date each benchmark JSON records.
ALLOWED = {"CHANGELOG.md", "RESULTS.md", "docs/results.md", "docs/changelog.md"}
FORBIDDEN = re.compile(
    r"\b(?:19|20)\d\d-[01]\d(?:-[0-3]\d)?\b"          # a date such as 2026-12-02 or 2026-12
    r"|(?<![\w.])sessions?(?![\w(])"                  # "session" as a word (not session_seconds)
    r"|closing[ -]notes?"
    r"|\bissues? #?\d+",
    flags=re.IGNORECASE)


def files_in_scope(root: Path = ROOT) -> list[Path]:
    found = []
    for entry in SCOPE:
        path = root / entry
        candidates = [path] if path.is_file() else sorted(path.rglob("*"))
        for file in candidates:
            relative = file.relative_to(root).as_posix()
            if (file.is_file() and file.suffix in SUFFIXES and relative not in ALLOWED
                    and "__pycache__" not in relative and ".ipynb_checkpoints" not in relative):
                found.append(file)
    return found


def offences(text: str) -> list[str]:
    return [match.group(0) for match in FORBIDDEN.finditer(text)]


def test_no_dates_sessions_or_issue_numbers_outside_changelog_and_results():
    found = {}
    for file in files_in_scope():
        for number, line in enumerate(file.read_text(errors="replace").splitlines(), 1):
            if offences(line):
                found[f"{file.relative_to(ROOT)}:{number}"] = line.strip()[:120]
    assert not found, "history belongs in CHANGELOG.md, measurements in RESULTS.md:\n" + "\n".join(
        f"{where}: {line}" for where, line in found.items())


def test_the_pattern_catches_what_it_should_and_spares_code_names():
    assert offences("the default until 2026-12-02 was 0.5") == ["2026-12-02"]
    assert offences("measured in session 9") == ["session"]
    assert offences("see the closing note") == ["closing note"]
    assert offences("fixed in issue 12 and Issue #3") == ["issue 12", "Issue #3"]
    assert offences("history['session_seconds'] and sess.session_id") == []
    assert offences("shape [2026, 12] and version 0.10.2") == []


def test_the_scope_covers_the_documentation_and_the_package():
    names = {file.relative_to(ROOT).as_posix() for file in files_in_scope()}
    assert "README.md" in names and "docs/math.md" in names and "sparse_bnn/core/model.py" in names
    assert any(name.startswith("notebooks/") and name.endswith(".ipynb") for name in names)
    assert not names & ALLOWED

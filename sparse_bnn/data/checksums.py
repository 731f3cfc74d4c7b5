"""Checks of the IDX files found on disk against the published checksums, done once per file.

A downloaded file is md5-checked as it arrives (:func:`sparse_bnn.data.locate.download_file`);
a file found in ``--data-dir``, ``$SPARSE_BNN_DATA``, the system folder or the cache is checked
by :func:`verify_idx_files` when it is first used: the md5 of a ``.gz`` file against the
published one, else (a file gzipped again, or not gzipped) the sha256 of its content against
that of the official file where it is known. The outcome is recorded in a marker file
(:data:`MARKER`) next to the files, or in the cache for a system folder or a read-only one, and the
check is repeated only when a file's size or modification time changes. A file that differs
gets an :class:`~sparse_bnn.errors.InputWarning`: it may be a corrupt copy, or the user's own
data in the IDX format, which stays usable.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import zlib
from pathlib import Path
from typing import Mapping

from sparse_bnn.data.formats import IDX_FILES, _idx_file
from sparse_bnn.errors import warn

MARKER = ".sparse_bnn_checksums.json"

# sha256 of the decompressed official files, for copies gzipped with another header (Debian's
# dataset-fashion-mnist stores the same deflate streams without the file name) or not gzipped.
CONTENT_SHA256 = {
    "fashion-mnist": {
        "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
}


def file_md5(path: Path) -> str:
    """The md5 of a file's bytes, read in chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def content_sha256(path: Path) -> str | None:
    """The sha256 of a file's content (gunzipped for ``.gz``); ``None`` if it cannot be read."""
    digest = hashlib.sha256()
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    except (OSError, EOFError, zlib.error):
        return None
    return digest.hexdigest()


def _marker_places(folder: Path, cache_root: Path, next_to_files: bool) -> list[Path]:
    """Where the marker of ``folder`` is kept: next to the files, else in the cache."""
    key = hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:16]
    return [folder / MARKER] * next_to_files + [cache_root / "checksums" / f"{key}.json"]


def _read_marker(places: list[Path]) -> dict:
    for place in places:
        try:
            recorded = json.loads(place.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(recorded, dict):
            return recorded
    return {}


def _write_marker(places: list[Path], recorded: dict) -> None:
    text = json.dumps(recorded, indent=1, sort_keys=True)
    for place in places:
        try:
            place.parent.mkdir(parents=True, exist_ok=True)
            temp = place.with_name(place.name + f".{os.getpid()}.tmp")
            temp.write_text(text)
            os.replace(temp, place)
            return
        except OSError:
            continue


def _check(file: Path, md5s: Mapping[str, str], contents: Mapping[str, str]) -> dict:
    """``{"md5", "verified", "known"}`` of one file: ``known`` when a checksum exists for it."""
    stem = file.name.removesuffix(".gz")
    published_md5 = md5s.get(file.name) if file.suffix == ".gz" else None
    actual_md5 = file_md5(file)
    if published_md5 is not None and actual_md5 == published_md5:
        return {"md5": actual_md5, "verified": True, "known": True}
    if stem in contents:
        return {"md5": actual_md5, "verified": content_sha256(file) == contents[stem], "known": True}
    return {"md5": actual_md5, "verified": False, "known": published_md5 is not None}


def verify_idx_files(folder: Path, md5s: Mapping[str, str], cache_root: Path, name: str | None = None,
                     next_to_files: bool = True) -> dict[str, bool]:
    """Check the four IDX files of ``folder`` (the ones a loader reads) once; warn for those
    that differ from the official files.

    Args:
      folder: a folder holding the four files (``.gz`` or raw).
      md5s: ``{file name: md5}`` of the published ``.gz`` files.
      cache_root: where the marker goes when ``folder`` is read-only.
      name: the data set (selects :data:`CONTENT_SHA256`; default: the folder's name).
      next_to_files: keep the marker in ``folder`` (else, and when it is read-only, in the cache).

    Returns:
      ``{file name: whether it matches the official file}`` for the files a checksum is known
      for (raw MNIST files, say, have none and are left out).
    """
    folder = Path(folder)
    contents = CONTENT_SHA256.get(name or folder.name, {})
    places = _marker_places(folder, cache_root, next_to_files)
    recorded = _read_marker(places)
    outcome, changed = {}, False
    for stem in IDX_FILES.values():
        file = _idx_file(folder, stem)
        if file is None:
            continue
        stat = file.stat()
        seen = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        entry = recorded.get(file.name)
        if not (isinstance(entry, dict) and all(entry.get(k) == v for k, v in seen.items())
                and {"verified", "known"} <= set(entry)):
            entry = {**seen, **_check(file, md5s, contents)}
            recorded[file.name], changed = entry, True
        if not entry["known"]:
            continue
        outcome[file.name] = bool(entry["verified"])
    differing = [file_name for file_name, verified in outcome.items() if not verified]
    if differing:
        warn(f"{folder}: {', '.join(differing)} differ from the official files (md5 or content checksum); "
             "they are corrupt or altered copies, or not the official data set: delete them to fetch the "
             "official files again (or keep them if they are your own data in the IDX format)")
    if changed:
        _write_marker(places, recorded)
    return outcome

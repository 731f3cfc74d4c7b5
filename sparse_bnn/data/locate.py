"""Where the files of a file-based data set are: the folders searched (``data_dir``,
``$SPARSE_BNN_DATA`` and its ``<name>`` subfolder, the Debian system folder
``/usr/share/datasets/<name>``, the cache ``$XDG_CACHE_HOME/sparse_bnn/<name>``), the
md5-checked downloads of MNIST and Fashion-MNIST into that cache (over https only), and the
check of the files found on disk against the published checksums
(:mod:`sparse_bnn.data.checksums`).

Tests monkeypatch :data:`SYSTEM_DATA_DIRS` and :func:`download_file` here.
"""
from __future__ import annotations

import os
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

from sparse_bnn.atomic import umask_mode
from sparse_bnn.data.checksums import file_md5 as _md5, verify_idx_files
from sparse_bnn.data.formats import IDX_FILES, DataNotFoundError, _cifar10_folder_kind, _folder_has_idx_set
from sparse_bnn.errors import InputError

# The official files, over https (the Fashion-MNIST repository's own copies).
DOWNLOAD_URLS = {
    "fashion-mnist": "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
}
# Schemes download_file accepts: https, and file for local copies (nothing travels a network).
ALLOWED_SCHEMES = ("https", "file")

# md5 of the official ``.gz`` files.
IDX_MD5 = {
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
    "mnist": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
}

# Debian's dataset-fashion-mnist installs here; tests monkeypatch this table.
SYSTEM_DATA_DIRS = {
    "fashion-mnist": Path("/usr/share/datasets/fashion-mnist"),
    "mnist": Path("/usr/share/datasets/mnist"),
}

_APT_PACKAGES = {"fashion-mnist": "dataset-fashion-mnist"}


def _cache_root() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "sparse_bnn"


def _search_places(name: str, data_dir: str | os.PathLike | None) -> list[tuple[str, Path | None]]:
    """The folders looked in, in order, each with a description for error messages."""
    places: list[tuple[str, Path | None]] = []
    if data_dir is not None:
        places += [("data_dir argument (--data-dir)", Path(data_dir)),
                   (f"data_dir argument, subfolder {name}", Path(data_dir) / name)]
    else:
        places.append(("data_dir argument (--data-dir): not given", None))
    env_dir = os.environ.get("SPARSE_BNN_DATA")
    if env_dir:
        places += [("$SPARSE_BNN_DATA", Path(env_dir)),
                   (f"$SPARSE_BNN_DATA, subfolder {name}", Path(env_dir) / name)]
    else:
        places.append(("$SPARSE_BNN_DATA: not set", None))
    if name in SYSTEM_DATA_DIRS:
        package = _APT_PACKAGES.get(name)
        label = f"system folder (Debian package {package})" if package else "system folder"
        places.append((label, SYSTEM_DATA_DIRS[name]))
    places.append(("cache ($XDG_CACHE_HOME or ~/.cache)", _cache_root() / name))
    return places


def _format_places(places: list[tuple[str, Path | None]]) -> str:
    return "\n".join(f"  {i}. {label}" + (f": {folder}" if folder is not None else "")
                     for i, (label, folder) in enumerate(places, start=1))


def download_file(url: str, destination: Path, md5: str, timeout: float = 60.0) -> None:
    """Download ``url`` to ``destination`` atomically (temp file + ``os.replace``), md5-checked.

    Only ``https`` (and ``file``) URLs are fetched: a plain ``http`` download could be altered on
    the way, so it is refused with an :class:`~sparse_bnn.errors.InputError`.
    """
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ALLOWED_SCHEMES:
        raise InputError(f"{url}: refusing to download over {scheme or 'no scheme'}; only "
                         f"{' or '.join(ALLOWED_SCHEMES)} URLs are fetched")
    destination.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=destination.parent, prefix=destination.name + ".")
    try:
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as r:
            for chunk in iter(lambda: r.read(1 << 20), b""):
                out.write(chunk)
        actual = _md5(Path(temp_name))
        if actual != md5:
            raise InputError(f"{url}: md5 {actual} does not match the published {md5}")
        os.chmod(temp_name, umask_mode(0o666))
        os.replace(temp_name, destination)
    finally:
        if os.path.exists(temp_name):
            os.remove(temp_name)


def _download_idx_set(name: str, folder: Path) -> None:
    for file_name, md5 in IDX_MD5[name].items():
        target = folder / file_name
        if target.is_file() and _md5(target) == md5:
            continue
        download_file(DOWNLOAD_URLS[name] + file_name, target, md5)


def find_idx_folder(name: str, data_dir: str | os.PathLike | None = None,
                    download: bool = True) -> Path:
    """The first folder holding the four IDX files of ``name`` (downloading as a last resort).

    Raises:
      DataNotFoundError: listing every place looked and how to get the data.
    """
    places = _search_places(name, data_dir)
    for _, folder in places:
        if folder is not None and _folder_has_idx_set(folder):
            verify_idx_files(folder, IDX_MD5.get(name, {}), _cache_root(), name,
                             next_to_files=folder != SYSTEM_DATA_DIRS.get(name))
            return folder
    cache_folder = _cache_root() / name
    if download:
        try:
            _download_idx_set(name, cache_folder)
            return cache_folder
        except (OSError, ValueError) as error:
            download_note = f"download from {DOWNLOAD_URLS[name]} failed: {error}"
    else:
        download_note = f"download from {DOWNLOAD_URLS[name]}: skipped (download=False)"
    stems = ", ".join(f"{stem}[.gz]" for stem in IDX_FILES.values())
    hints = []
    if name in _APT_PACKAGES:
        hints.append(f"sudo apt-get install {_APT_PACKAGES[name]}   "
                     f"(installs into {SYSTEM_DATA_DIRS[name]})")
    hints += [f"download the four .gz files from {DOWNLOAD_URLS[name]} into a folder and pass "
              "--data-dir FOLDER (or set SPARSE_BNN_DATA=FOLDER)",
              "or work offline on a bundled set: --data digits"]
    raise DataNotFoundError(
        f"{name} not found. Each place needs the files {stems}. Looked in, in this order:\n"
        f"{_format_places(places)}\n  {len(places) + 1}. {download_note}\n"
        "To get the data:\n" + "\n".join(f"  * {hint}" for hint in hints))


CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"


def find_cifar10_folder(data_dir: str | os.PathLike | None = None) -> Path:
    places = [(label, folder) for label, folder in _search_places("cifar10", data_dir)]
    for _, folder in places:
        if folder is not None and _cifar10_folder_kind(folder) is not None:
            return folder
    raise DataNotFoundError(
        "cifar10 not found (needs cifar-10-batches-bin/ or cifar-10-batches-py/). "
        f"Looked in, in this order:\n{_format_places(places)}\n"
        f"To get the data: download the binary (or python) version from {CIFAR10_URL}, "
        "unpack it into a folder and pass --data-dir FOLDER (or set SPARSE_BNN_DATA=FOLDER); "
        "or work offline on a bundled set: --data digits")

"""Dataset files shared by every image task: where they live, checksummed downloads, and reading
zip and tar archives without extracting them.

``<data_dir>/<dataset>/`` holds a dataset's files, where ``data_dir`` is the task's
``data_dir`` setting (``--data-dir``), else ``$METAGRAD_DATA``, else ``~/.cache/metagrad``.
Archives are read in place: no entry is ever written to disk, an entry whose name is absolute or
climbs out with ``..`` makes the whole archive refused, and a tar's links and devices are
refused too (a regular file's bytes are all that is ever read).
"""

from __future__ import annotations

import hashlib
import http.client
import io
import os
import pickle
import re
import tarfile
import urllib.error
import urllib.request
import zipfile
import zlib
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator

from tqdm.auto import tqdm

from ..errors import DataError
from ..io import atomic_write


def default_data_dir() -> Path:
    """``$METAGRAD_DATA``, else ``~/.cache/metagrad``."""
    return Path(os.environ.get("METAGRAD_DATA") or Path.home() / ".cache" / "metagrad").expanduser()


def dataset_dir(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    """The folder of dataset ``name``: ``<data_dir>/<name>`` (``data_dir`` as the module says)."""
    return (Path(data_dir).expanduser() if data_dir else default_data_dir()) / name


def file_digest(path: Path, algorithm: str = "md5") -> str:
    """Hex digest of a file, read in 1 MiB chunks."""
    digest = hashlib.new(algorithm, usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def download(url: str, dest: Path, md5: str) -> Path:
    """Fetch ``url`` into ``dest`` with a progress bar; the file appears only when complete and
    its md5 is ``md5``. Failures are one-line :class:`DataError` naming the URL."""
    dest = Path(dest)

    def fetch(tmp: Path) -> None:
        digest = hashlib.md5(usedforsecurity=False)
        try:
            with urllib.request.urlopen(url, timeout=60) as resp, open(tmp, "wb") as out:
                total = int(resp.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {dest.name}") as bar:
                    while chunk := resp.read(1 << 16):
                        out.write(chunk)
                        digest.update(chunk)
                        bar.update(len(chunk))
        except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
            raise DataError(f"could not download {url}: {e}; place {dest.name} in {dest.parent} yourself, "
                            f"or give --data-dir (task.data_dir) a folder D that has D/{dest.parent.name}/{dest.name}") from None
        if digest.hexdigest() != md5:
            raise DataError(f"downloaded {dest.name} from {url} has md5 {digest.hexdigest()}, expected {md5}; nothing was saved")

    try:
        atomic_write(dest, fetch)
    except OSError as e:
        raise DataError(f"could not save {dest}: {e}") from None
    return dest


def source_file(path: Path, url: str | None, md5: str | None, download_ok: bool, what: str) -> Path:
    """``path`` if it is a file, else downloaded there from ``url`` (md5-checked) when
    ``download_ok``; otherwise, or if the download fails, a one-line :class:`DataError` naming
    ``what`` and exactly which file to put in which folder."""
    path = Path(path)
    if path.is_file():
        return path
    place = f"put {path.name} in {path.parent}"
    if url is None or not download_ok:
        fix = f"{place} (or set task.download=true to fetch it)" if url else place
        raise DataError(f"{what} is missing: {fix}")
    try:
        return download(url, path, md5)
    except DataError as e:
        msg = str(e)
        raise DataError(msg if str(path.parent) in msg else f"{msg}; {place} yourself") from None


def folder_files(root: Path) -> Iterator[tuple[tuple[str, ...], Callable[[], bytes]]]:
    """The regular files under the folder ``root`` like :func:`archive_files` (path components
    starting with ``root``'s own name, then read), in sorted order; hidden files are skipped."""
    root = Path(root)
    for path in sorted(root.rglob("*")):
        parts = (root.name, *path.relative_to(root).parts)
        if path.is_file() and not is_junk(parts[1:]):
            yield parts, path.read_bytes


def shipped_classes(name: str) -> list[str]:
    """The class names listed one per line in the package file ``metagrad/data/<name>.txt``."""
    return (resources.files("metagrad") / "data" / f"{name}.txt").read_text().split()


def entry_parts(entry: str, archive: Path) -> tuple[str, ...]:
    """Path components of an archive entry; refuses names that would land outside the archive's folder."""
    parts = PurePosixPath(entry.replace("\\", "/")).parts
    if entry.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", entry) or ".." in parts:
        raise DataError(f"{archive}: unsafe entry {entry!r} (absolute path or '..'); refusing to read this archive")
    return parts


def is_junk(parts: tuple[str, ...]) -> bool:
    """Entries archivers add beside the data: macOS resource forks and hidden files."""
    return not parts or parts[0] == "__MACOSX" or any(p.startswith(".") for p in parts)


ARCHIVE_ERRORS = (zipfile.BadZipFile, tarfile.TarError, zlib.error, EOFError, OSError)


def archive_files(path: Path, data: bytes | None = None) -> Iterator[tuple[tuple[str, ...], Callable[[], bytes]]]:
    """The regular files of a zip or tar(.gz/.bz2/.xz) archive, in archive order, as (path
    components, read); ``read()`` returns the entry's bytes and must be called before the
    iteration moves on (a compressed tar is read once, front to back). Hidden entries are
    skipped; an unsafe name, or a tar link or device, refuses the archive; a corrupt or
    truncated archive is a one-line :class:`DataError` naming it. ``data``: the archive's bytes
    (an archive read from inside another one); ``path`` then only names it in messages."""
    path = Path(path)
    source = io.BytesIO(data) if data is not None else path

    def rewound():
        if data is not None:
            source.seek(0)
        return source

    try:
        if zipfile.is_zipfile(rewound()):
            with zipfile.ZipFile(rewound()) as zf:
                for info in zf.infolist():
                    parts = entry_parts(info.filename, path)
                    if not info.is_dir() and not is_junk(parts):
                        yield parts, (lambda info=info: _read_zip(zf, info, path))
            return
        if not tarfile.is_tarfile(rewound()):
            raise DataError(f"{path}: not a readable zip or tar archive; delete it and fetch it again")
        with tarfile.open(path, "r:*") if data is None else tarfile.open(fileobj=rewound(), mode="r:*") as tf:
            for member in tf:
                parts = entry_parts(member.name, path)
                if member.isdir() or is_junk(parts):
                    continue
                if not member.isfile():
                    raise DataError(f"{path}: entry {member.name!r} is a link or device, not a file; refusing to read this archive")
                yield parts, (lambda member=member: _read_tar(tf, member, path))
    except DataError:
        raise
    except ARCHIVE_ERRORS as e:
        raise DataError(f"{path}: corrupt or truncated archive ({e}); delete it and fetch it again") from None


def _read_zip(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> bytes:
    try:
        return zf.read(info)
    except ARCHIVE_ERRORS as e:
        raise DataError(f"{path}: corrupt archive, entry {info.filename}: {e}") from None


def _read_tar(tf: tarfile.TarFile, member: tarfile.TarInfo, path: Path) -> bytes:
    try:
        f = tf.extractfile(member)
        data = f.read() if f is not None else b""
    except ARCHIVE_ERRORS as e:
        raise DataError(f"{path}: corrupt archive, entry {member.name}: {e}") from None
    if len(data) != member.size:
        raise DataError(f"{path}: corrupt archive, entry {member.name} is truncated")
    return data


#: what a dataset pickle may construct: numpy arrays, dtypes and scalars, and plain containers
PICKLE_GLOBALS = {
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("collections", "OrderedDict"), ("_codecs", "encode"),
}


class _Forbidden(pickle.UnpicklingError):
    pass


class _DataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in PICKLE_GLOBALS:
            raise _Forbidden(f"it wants to run {module}.{name}")
        if module.startswith("numpy.core"):  # NumPy 2 moved numpy.core to numpy._core
            import numpy

            if int(numpy.__version__.split(".")[0]) >= 2:
                module = "numpy._core" + module[len("numpy.core"):]
        return super().find_class(module, name)


def load_data_pickle(data: bytes, name: str) -> object:
    """Unpickle a dataset file (CIFAR batches, mini-/tieredImageNet caches) without executing
    code: only numpy arrays, dtypes, scalars and plain containers may be built (Python 2 pickles
    included: their byte strings stay bytes). Anything else is a one-line DataError naming ``name``."""
    try:
        return _DataUnpickler(io.BytesIO(data), encoding="bytes").load()
    except _Forbidden as e:
        raise DataError(f"{name}: refusing to unpickle: {e}; only plain data (arrays, lists, dicts) is loaded") from None
    except Exception as e:  # a truncated or foreign file: EOFError, ValueError, ...
        raise DataError(f"{name}: not a readable pickle ({type(e).__name__}: {e})") from None

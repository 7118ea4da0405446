"""Small I/O helpers: atomic writes, JSON, checksums, and readers that name a broken file.

Every output the workflow trusts is written to a temporary name beside its target and renamed
into place, so an interrupted job never leaves a half-written file that a rerun would accept.
Files can still break afterwards (a full disk during a copy, a partial rsync); the readers here
turn numpy's and pyarrow's errors, which name no file, into an :class:`InputError` that names the
file and says how to get a good copy back.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np


class InputError(RuntimeError):
    """A missing or malformed input; the message names the file and what was expected."""


REBUILD = ("Delete it and rerun snakemake: a missing output is rebuilt by the rule that wrote it "
           "(`snakemake --summary` lists each file's rule).")
"""What to do about a broken workflow output, unless the caller knows better (a file inside a
``directory()`` output needs the whole directory deleted, and says so)."""

# What numpy raises for truncated or garbled files: a short .npy read as a memory map fails with
# "mmap length is greater than file size" (ValueError), a short one read eagerly with EOFError or
# ValueError, a broken .npz with BadZipFile or OSError.
CORRUPT = (OSError, ValueError, EOFError, zipfile.BadZipFile)


def _a(what: str) -> str:
    return f"{'an' if what[:1].lower() in 'aeiou' else 'a'} {what}"


def unreadable(path: str | os.PathLike, what: str, err: BaseException,
               remedy: str = REBUILD) -> InputError:
    """The error for a file that exists but cannot be read: path, expectation, cause, remedy."""
    return InputError(f"{path}: expected {_a(what)}, but it is truncated or corrupt "
                      f"({type(err).__name__}: {err}). {remedy}")


def _require_file(path: Path, what: str, remedy: str) -> None:
    if not path.is_file():
        raise InputError(f"{path}: expected {_a(what)}, but the file does not exist. {remedy}")


def load_npy(path: str | os.PathLike, what: str = "numpy array (.npy)", *, mmap: bool = True,
             remedy: str = REBUILD) -> np.ndarray:
    """Read a ``.npy`` file (memory-mapped read-only by default), naming the file on failure."""
    path = Path(path)
    _require_file(path, what, remedy)
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except CORRUPT as err:
        raise unreadable(path, what, err, remedy) from err


def load_npz(path: str | os.PathLike, keys: tuple[str, ...], what: str = "numpy archive (.npz)",
             *, remedy: str = REBUILD) -> dict[str, np.ndarray]:
    """Read the arrays ``keys`` of an ``.npz`` file into memory, naming the file on failure.

    The arrays are read inside the call: a damaged member fails here, not at first use.
    """
    path = Path(path)
    _require_file(path, what, remedy)
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in keys if k not in z.files]
            if missing:
                raise InputError(f"{path}: expected {_a(what)} with arrays {list(keys)}, but "
                                 f"{missing} are missing. {remedy}")
            return {k: z[k] for k in keys}
    except CORRUPT as err:
        raise unreadable(path, what, err, remedy) from err


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` on success.

    Works for files and directories. On error the temporary path is removed and ``target`` is
    left untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    # mkdtemp gives us a unique directory; hand out a path inside it so callers may create
    # either a file or a directory there.
    inner = tmp / (target.name + suffix)
    try:
        yield inner
        if not inner.exists():
            raise RuntimeError(f"atomic write of {target}: nothing was written")
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(inner, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> None:
    """Write ``obj`` as JSON atomically (numpy scalars and arrays allowed)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=indent, default=_json_default) + "\n")


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """Read JSON, raising :class:`InputError` naming the file if it is missing or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: expected a {what}, but the file does not exist")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: expected a {what}, but it is not valid JSON ({err})") from err


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()

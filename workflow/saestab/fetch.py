"""Fetch pinned inputs: one file out of a Python wheel, or a Hugging Face model at a revision.

Small test corpora ship inside published wheels (e.g. gensim's Wikipedia sample), so fetching one
is a ``pip download`` through the user's ordinary package index plus a checksum-verified
extraction. Hub models are downloaded once, on the submitting host (cluster nodes often have no
internet), into ``resources/``; every later job reads that directory with the hub switched off.
Every step writes atomically: an interrupted or failed fetch leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from .io import InputError, atomic_path
from .logs import get_logger

log = get_logger("fetch")

_SHA256 = re.compile(r"[0-9a-f]{64}")


class FetchError(InputError):
    """A download that failed or a fetched file that is not what was expected."""


def _tail(text: str, n_lines: int = 20) -> str:
    lines = text.strip().splitlines()
    return "\n".join(lines[-n_lines:])


def download_wheel(requirement: str, dest_dir: str | os.PathLike) -> Path:
    """Download the wheel for ``requirement`` (e.g. ``"gensim==4.4.0"``) into ``dest_dir``.

    Runs ``python -m pip download --no-deps --only-binary=:all:`` into a fresh temporary
    directory and moves the single wheel it produced into ``dest_dir``. Returns its path.
    """
    requirement = requirement.strip()
    if not requirement or requirement.startswith("-"):
        raise ValueError(f"expected a requirement such as 'gensim==4.4.0', got {requirement!r}")
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    # The temporary directory lives in dest_dir so the final move is a same-filesystem rename.
    with tempfile.TemporaryDirectory(prefix=".pip-download.", dir=dest_dir) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "-d", tmp, requirement]
        log.info("downloading %s", requirement)
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise FetchError(
                f"pip download of {requirement!r} failed with exit status {proc.returncode}:\n"
                f"{_tail(proc.stderr or proc.stdout or '')}"
            )
        files = sorted(p for p in Path(tmp).iterdir() if not p.name.startswith("."))
        if len(files) != 1 or not files[0].name.endswith(".whl"):
            names = ", ".join(p.name for p in files) or "nothing"
            raise FetchError(
                f"pip download of {requirement!r} into {dest_dir}: expected exactly one wheel, "
                f"got {names}"
            )
        target = dest_dir / files[0].name
        os.replace(files[0], target)
    log.info("downloaded %s", target)
    return target


def extract_member(wheel: str | os.PathLike, member: str, dest: str | os.PathLike,
                   sha256: str | None = None) -> Path:
    """Extract the file ``member`` of the wheel (a zip archive) to ``dest``, atomically.

    If ``sha256`` is given the extracted bytes must have that hex SHA-256; on a mismatch a
    :class:`FetchError` names both digests and ``dest`` is not written. Returns ``dest``.
    """
    wheel, dest = Path(wheel), Path(dest)
    expected = sha256.lower().strip() if sha256 is not None else None
    if expected is not None and not _SHA256.fullmatch(expected):
        raise ValueError(f"expected a 64-character hex SHA-256, got {sha256!r}")
    if not wheel.is_file():
        raise InputError(f"{wheel}: expected a wheel (zip archive), but the file does not exist")
    try:
        archive = zipfile.ZipFile(wheel)
    except zipfile.BadZipFile as err:
        raise InputError(f"{wheel}: expected a wheel (zip archive), but it is not one ({err})") \
            from err
    with archive:
        try:
            info = archive.getinfo(member)
        except KeyError:
            raise InputError(f"{wheel}: expected a member {member!r}, but the wheel has none") \
                from None
        if info.is_dir():
            raise InputError(f"{wheel}: member {member!r} is a directory, expected a file")
        digest = hashlib.sha256()
        with atomic_path(dest) as tmp, archive.open(info) as src, open(tmp, "wb") as out:
            while block := src.read(1 << 20):
                digest.update(block)
                out.write(block)
            out.close()
            found = digest.hexdigest()
            if expected is not None and found != expected:
                # Raising inside atomic_path removes the temporary file; dest is not touched.
                raise FetchError(
                    f"{wheel}: member {member!r} has SHA-256 {found}, expected {expected}"
                )
    log.info("extracted %s from %s to %s (sha256 %s)", member, wheel.name, dest, found)
    return dest


# Weight formats other frameworks need and a PyTorch load does not (they can double or triple a
# download: gemma-2-2b also ships a 10 GB GGUF file).
HUB_IGNORE = ("*.msgpack", "*.h5", "*.ot", "*.onnx", "onnx/*", "*.gguf", "*.tflite",
              "flax_model*", "tf_model*", "rust_model*", "coreml/*", "original/*")
SOURCE_FILE = "source.json"
"""Written beside a fetched snapshot: the repository and revision it came from."""


def hub_snapshot(repo_id: str, revision: str, dest: str | os.PathLike,
                 ignore_patterns: tuple[str, ...] = HUB_IGNORE) -> Path:
    """Download the Hugging Face model ``repo_id`` at ``revision`` into the directory ``dest``.

    ``revision`` should be a commit hash (a branch moves); ``dest`` then holds exactly that
    snapshot, loadable with ``from_pretrained(dest)`` and no network, plus :data:`SOURCE_FILE`.
    Raises :class:`FetchError` naming the repository and revision if the download fails.
    """
    from huggingface_hub import snapshot_download  # noqa: PLC0415 (only fetch jobs need it)

    if not revision:
        raise ValueError(f"{repo_id}: a revision (commit hash) is required to pin the download")
    with atomic_path(dest) as tmp:
        log.info("downloading %s at revision %s", repo_id, revision)
        try:
            snapshot_download(repo_id=repo_id, revision=revision, local_dir=tmp,
                              ignore_patterns=list(ignore_patterns))
        except Exception as err:  # noqa: BLE001 (network, auth, missing revision: all reported)
            raise FetchError(f"download of {repo_id} at revision {revision} failed "
                             f"({type(err).__name__}: {err}). Check the name and revision, "
                             "network access, and HF_TOKEN for gated models.") from err
        (tmp / SOURCE_FILE).write_text(json.dumps(
            {"repo_id": repo_id, "revision": revision}, indent=2) + "\n")
    log.info("wrote %s", dest)
    return Path(dest)


HUB_PREFIX = "hf://"


def sae_location(location: str | os.PathLike, revision: str | None = None,
                 cache_dir: str | os.PathLike | None = None) -> Path:
    """A local directory holding one SAE: ``location`` itself, or, for
    ``hf://<org>/<repo>/<subfolder>``, that subfolder of a Hugging Face repository in SAELens's
    release layout (``cfg.json`` and ``sae_weights.safetensors`` per SAE folder), downloaded at
    ``revision`` into the hub cache. Only the one folder is downloaded, not the whole release.
    """
    text = str(location)
    if not text.startswith(HUB_PREFIX):
        return Path(location)
    parts = text[len(HUB_PREFIX):].strip("/").split("/")
    if len(parts) < 2:
        raise ValueError(f"{text}: expected hf://<org>/<repo>[/<subfolder>]")
    repo_id, subfolder = "/".join(parts[:2]), "/".join(parts[2:])
    from huggingface_hub import snapshot_download  # noqa: PLC0415 (only hub users need it)

    pattern = f"{subfolder}/*" if subfolder else "*"
    try:
        root = snapshot_download(repo_id=repo_id, revision=revision, cache_dir=cache_dir,
                                 allow_patterns=[pattern])
    except Exception as err:  # noqa: BLE001 (network, auth, missing revision: all reported)
        raise FetchError(f"download of {text} (revision {revision or 'main'}) failed "
                         f"({type(err).__name__}: {err}); with no network, download the folder "
                         "elsewhere and pass its local path") from err
    path = Path(root) / subfolder
    if not (path / "cfg.json").is_file():
        raise FetchError(f"{text}: the repository has no cfg.json in {subfolder or 'its root'} "
                         "(expected SAELens's layout: one folder per SAE)")
    return path


__all__ = ["FetchError", "download_wheel", "extract_member", "hub_snapshot", "sae_location"]

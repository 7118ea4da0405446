
import pytest
import torch

from saestab import models

from .conftest import TINY_NATIVE


def _params(bridge):
    return {k: v.detach().clone() for k, v in bridge.state_dict().items()}


def test_native_random_differs_from_trained_and_is_deterministic():
    a = models.load_model(TINY_NATIVE, "trained")
    b = models.load_model(TINY_NATIVE, "random", random_seed=0)
    c = models.load_model(TINY_NATIVE, "random", random_seed=0)
    d = models.load_model(TINY_NATIVE, "random", random_seed=1)
    pa, pb, pc, pd = map(_params, (a.bridge, b.bridge, c.bridge, d.bridge))
    assert pa.keys() == pb.keys()
    big = [k for k in pa if pa[k].numel() > 64 and pa[k].std() > 0]
    assert big
    assert all(not torch.equal(pa[k], pb[k]) for k in big)
    assert all(torch.equal(pb[k], pc[k]) for k in pb)
    assert any(not torch.equal(pb[k], pd[k]) for k in big)


def test_forward_fn_matches_full_run_with_cache(tiny_model):
    hook = "blocks.0.hook_resid_post"
    tokens = torch.randint(0, 256, (3, 20), generator=torch.Generator().manual_seed(0))
    got = tiny_model.forward_fn(hook)(tokens)
    _, cache = tiny_model.bridge.run_with_cache(tokens)
    torch.testing.assert_close(got, cache[hook], rtol=0, atol=0)


def test_unknown_hook_is_a_clear_error(tiny_model):
    with pytest.raises(KeyError, match="no hook point 'blocks.9.hook_resid_post'"):
        tiny_model.forward_fn("blocks.9.hook_resid_post")


def test_byte_tokenizer_round_trip():
    tok = models.ByteTokenizer()
    ids = tok.encode("naïve café, 42!")
    assert max(ids) < 256
    assert tok.decode(ids) == "naïve café, 42!"
    assert tok.decode([tok.bos_token_id]) == "<bos>"


def test_unknown_source_and_weights_rejected():
    with pytest.raises(ValueError, match="unknown source"):
        models.load_model({"source": "onnx"})
    with pytest.raises(ValueError, match="weights must be one of"):
        models.load_model(TINY_NATIVE, "salmon")


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A tiny Llama and a byte-level BPE tokenizer saved in HF format: the `hub` code path."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers, trainers
    from tokenizers import models as tk_models
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from .conftest import synthetic_documents

    tk = Tokenizer(tk_models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<bos>", "<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(synthetic_documents(8), trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>")
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=128, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(123)
        model = LlamaForCausalLM(cfg)
    d = tmp_path_factory.mktemp("tiny_llama")
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


def test_hub_path_matches_hf_and_random_reinit(hf_dir):
    from transformers import AutoModelForCausalLM

    spec = {"source": "hub", "name": str(hf_dir), "hooks": ["blocks.1.hook_resid_post"]}
    trained = models.load_model(spec, "trained")
    assert trained.n_layers == 3 and trained.d_model == 32
    ids = torch.tensor([trained.tokenizer.encode("The old river crosses a bridge slowly.")])
    hf = AutoModelForCausalLM.from_pretrained(hf_dir)
    with torch.no_grad():
        ref = hf(ids, output_hidden_states=True)
        got = trained.forward_fn("blocks.1.hook_resid_post")(ids)
        logits = trained.bridge(ids)
    # hook_resid_post of block 1 is the HF hidden state after two blocks
    torch.testing.assert_close(got, ref.hidden_states[2], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits, ref.logits, rtol=1e-5, atol=1e-5)

    state = torch.random.get_rng_state()
    r1 = models.load_model(spec, "random", random_seed=7)
    assert torch.equal(state, torch.random.get_rng_state()), "global RNG must be untouched"
    r2 = models.load_model(spec, "random", random_seed=7)
    with torch.no_grad():
        a1 = r1.forward_fn("blocks.1.hook_resid_post")(ids)
        a2 = r2.forward_fn("blocks.1.hook_resid_post")(ids)
    torch.testing.assert_close(a1, a2, rtol=0, atol=0)
    assert not torch.allclose(a1, got, atol=1e-3)
    tok = models.load_tokenizer(spec)
    assert tok.encode("a red river") == trained.tokenizer.encode("a red river")

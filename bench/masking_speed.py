"""Spliced masking loss: prefix reuse against a full re-run per masking condition.

Measures, side by side in one run on the same contexts, SAE and feature sets:
  * saestab.masking.spliced_loss with the model re-run from the first layer per condition,
  * the same with prefix reuse (blocks up to the hook run once per context batch, only the
    later blocks per condition),
and prints both times, their ratio, the time per anchor SAE with as many sets as the workflow
masks (ten sets and ``none`` with the SAE error term kept, three of them also without it), and
the largest difference in ΔCE and KL.

Usage: python bench/masking_speed.py                 (a native 8-layer model, hook after block 3)
       python bench/masking_speed.py --smollm2-shape   (random weights in SmolLM2-135M's shape:
                                                       Llama, 30 blocks, hook after block 15)
       python bench/masking_speed.py --config config.yaml [--model smollm2]
The last form loads the configured model, whose files must have been fetched (the workflow's
fetch rules, or `make run`); its first hook is used.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "workflow"))
from saestab import masking, models  # noqa: E402
from saestab.config import validate_config  # noqa: E402
from saestab.sae import SAEConfig, sae_from_tensors  # noqa: E402

NATIVE = {
    "source": "native",
    "hooks": ["blocks.3.hook_resid_post"],
    "seed": 0,
    "config": {"n_layers": 8, "d_model": 128, "n_ctx": 128, "d_head": 32, "n_heads": 4,
               "d_mlp": 512, "act_fn": "gelu", "normalization_type": "LN"},
}


def smollm2_shaped(tmp: Path) -> tuple[object, str]:
    """A TransformerBridge over a random-weight Llama of SmolLM2-135M's dimensions, booted offline
    (a word-level tokenizer stands in for the real one: only the shapes matter here)."""
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformer_lens import TransformerBridge
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    hf = LlamaForCausalLM(LlamaConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
        tie_word_embeddings=True)).eval()
    hf.config.save_pretrained(tmp)
    words = Tokenizer(WordLevel({f"w{i}": i for i in range(49152)}, unk_token="w0"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=words, bos_token="w1", eos_token="w2",
                            unk_token="w0").save_pretrained(tmp)
    bridge = TransformerBridge.boot_transformers(str(tmp), hf_model=hf,
                                                 tokenizer=AutoTokenizer.from_pretrained(tmp))
    return bridge, "blocks.15.hook_resid_post"


def random_topk_sae(d: int, m: int, k: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, m, generator=g) / d**0.5
    return sae_from_tensors(SAEConfig(architecture="topk", d_in=d, d_sae=m, k=k),
                            {"W_enc": w, "W_dec": w.T.contiguous(), "b_enc": torch.zeros(m),
                             "b_dec": torch.zeros(d)})


def feature_sets(m: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Ten random sets in place of the default masking sets (their count sets the cost)."""
    return {name: np.sort(rng.choice(m, size=int(rng.integers(m // 20, m // 4)), replace=False))
            for name in masking.SET_ORDER}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=None, help="use this config's model (default: native)")
    ap.add_argument("--smollm2-shape", action="store_true",
                    help="a random-weight Llama of SmolLM2-135M's shape (no files needed)")
    ap.add_argument("--model", default=None, help="model name in the config (default: first)")
    ap.add_argument("--contexts", type=int, default=8)
    ap.add_argument("--context-length", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of each (the fastest "
                    "counts)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    bos: int | None = None
    if args.smollm2_shape:
        name, vocab = "SmolLM2-135M-shaped random Llama", 49152
        bridge, hook = smollm2_shaped(Path(tempfile.mkdtemp()))
        d_model, n_layers = 576, 30
    else:
        if args.config:
            cfg = validate_config(yaml.safe_load(Path(args.config).read_text()))
            name = args.model or next(iter(cfg["models"]))
            spec = cfg["models"][name]
            model = models.load_model(spec, "trained", name=name,
                                      model_dir=REPO / "resources" / "models" / name)
        else:
            name, spec = "native-8L", NATIVE
            model = models.load_model(spec, "trained", name=name)
        hook, bridge = spec["hooks"][0], model.bridge
        vocab, bos = model.tokenizer.vocab_size, model.tokenizer.bos_token_id
        d_model, n_layers = model.d_model, model.n_layers
    rng = np.random.default_rng(0)
    contexts = rng.integers(3, min(vocab, 30000), size=(args.contexts, args.context_length))
    if bos is not None:
        contexts[:, 0] = bos
    sae = random_topk_sae(d_model, 2 * d_model, k=32)
    sets = feature_sets(sae.cfg.d_sae, rng)

    runners = {reuse: masking.bridge_runners(bridge, hook, reuse_prefix=reuse)
               for reuse in (False, True)}
    times: dict[bool, list[float]] = {False: [], True: []}
    results = {}
    for reuse in (False, True):  # warm-up (and the prefix reuse's one check against a full run)
        masking.spliced_loss(*runners[reuse], sae, contexts[: args.batch_size], {},
                             batch_size=args.batch_size)
    for _ in range(args.repeats):  # alternate, so that load from other processes hits both
        for reuse in (False, True):
            t = time.perf_counter()
            results[reuse] = masking.spliced_loss(
                *runners[reuse], sae, contexts, sets, batch_size=args.batch_size,
                reconstruction_only=masking.RECONSTRUCTION_ONLY)
            times[reuse].append(time.perf_counter() - t)
    full, reused = results[False], results[True]
    t_full, t_reuse = min(times[False]), min(times[True])
    diff = max(float(np.abs(reused[c] - full[c]).max()) for c in ("delta_ce", "kl"))
    n_cond = len(full)
    print(f"model {name} ({n_layers} blocks), hook {hook}, {args.contexts} contexts x "
          f"{args.context_length} tokens, batch {args.batch_size}, {torch.get_num_threads()} "
          f"threads; {n_cond} conditions (sets x error modes) per anchor")
    print(f"full re-run per condition:  {t_full:8.2f} s per anchor (fastest of {args.repeats})")
    print(f"prefix reuse:               {t_reuse:8.2f} s per anchor (fastest of {args.repeats})")
    print(f"ratio full / reuse:         {t_full / t_reuse:8.2f}")
    print(f"max |difference| ΔCE, KL:   {diff:8.1e} nats")


if __name__ == "__main__":
    main()

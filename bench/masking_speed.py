"""Spliced masking loss: prefix reuse against a full re-run per masking condition.

Measures, side by side in one run on the same contexts, SAE and feature sets:
  * saestab.masking.spliced_loss with the model re-run from the first layer per condition,
  * the same with prefix reuse (blocks up to the hook run once per context batch, only the
    later blocks per condition),
and prints both times, their ratio, the time per anchor SAE with the default sets (ten sets and
``none``, each with and without the SAE error term), and the largest difference in ΔCE and KL.

Usage: python bench/masking_speed.py                 (a native 8-layer model, hook after block 3)
       python bench/masking_speed.py --config config.yaml [--model smollm2]
The second form loads the configured model, whose files must have been fetched (the workflow's
fetch rules, or `make run`); its first hook is used.
"""

from __future__ import annotations

import argparse
import sys
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

    if args.config:
        cfg = validate_config(yaml.safe_load(Path(args.config).read_text()))
        name = args.model or next(iter(cfg["models"]))
        spec = cfg["models"][name]
        model = models.load_model(spec, "trained", model_dir=REPO / "resources" / "models" / name,
                                  name=name)
    else:
        name, spec = "native-8L", NATIVE
        model = models.load_model(spec, "trained", name=name)
    hook = spec["hooks"][0]
    rng = np.random.default_rng(0)
    vocab = min(model.tokenizer.vocab_size, 30000)
    contexts = rng.integers(3, vocab, size=(args.contexts, args.context_length))
    if model.tokenizer.bos_token_id is not None:
        contexts[:, 0] = model.tokenizer.bos_token_id
    sae = random_topk_sae(model.d_model, 2 * model.d_model, k=32)
    sets = feature_sets(sae.cfg.d_sae, rng)

    runners = {reuse: masking.bridge_runners(model.bridge, hook, reuse_prefix=reuse)
               for reuse in (False, True)}
    times: dict[bool, list[float]] = {False: [], True: []}
    results = {}
    for reuse in (False, True):  # warm-up (and the prefix reuse's one check against a full run)
        masking.spliced_loss(*runners[reuse], sae, contexts[: args.batch_size], {},
                             batch_size=args.batch_size)
    for _ in range(args.repeats):  # alternate, so that load from other processes hits both
        for reuse in (False, True):
            t = time.perf_counter()
            results[reuse] = masking.spliced_loss(*runners[reuse], sae, contexts, sets,
                                                  batch_size=args.batch_size)
            times[reuse].append(time.perf_counter() - t)
    full, reused = results[False], results[True]
    t_full, t_reuse = min(times[False]), min(times[True])
    diff = max(float(np.abs(reused[c] - full[c]).max()) for c in ("delta_ce", "kl"))
    n_cond = len(full)
    print(f"model {name} ({model.n_layers} blocks), hook {hook}, {args.contexts} contexts x "
          f"{args.context_length} tokens, batch {args.batch_size}, {torch.get_num_threads()} "
          f"threads; {n_cond} conditions (sets x error modes) per anchor")
    print(f"full re-run per condition:  {t_full:8.2f} s per anchor (fastest of {args.repeats})")
    print(f"prefix reuse:               {t_reuse:8.2f} s per anchor (fastest of {args.repeats})")
    print(f"ratio full / reuse:         {t_full / t_reuse:8.2f}")
    print(f"max |difference| ΔCE, KL:   {diff:8.1e} nats")


if __name__ == "__main__":
    main()

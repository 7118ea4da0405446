"""Activation-cache throughput against the forward pass's FLOP bound on this machine.

Measures, in one run:
  * the dense float32 matmul rate of this machine (GFLOP/s, square matmuls, torch's threads),
  * the matmul FLOPs per token of the forward pass up to the cached hook (2 x weight-matrix
    parameters of the blocks that run, plus the attention score/value products),
  * the tokens/s of saestab.activations.write_cache on real contexts,
and prints the ratio measured / bound, where bound = matmul rate / FLOPs per token.

Usage: python bench/cache_throughput.py [--config config.yaml] [--model smollm2] [--tokens 8192]
The model's files must have been fetched (run the workflow's fetch rules, or `make run`).
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
from saestab import activations, models  # noqa: E402
from saestab.config import validate_config  # noqa: E402


def matmul_gflops(n: int = 2048, repeats: int = 10) -> float:
    a = torch.randn(n, n)
    b = torch.randn(n, n)
    for _ in range(2):
        a @ b
    t = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - t) / 1e9


def forward_flops_per_token(model: models.LoadedModel, hook: str, context_length: int) -> float:
    """Matmul FLOPs per token of the blocks that run up to ``hook`` (embeddings are lookups)."""
    layer = activations.hook_layer(hook)
    n_blocks = model.n_layers if layer is None else layer + 1
    hf = model.bridge.original_model
    per_block = 0
    blocks = [m for name, m in hf.named_modules() if name.endswith("layers.0") or
              name.endswith("h.0") or name.endswith("blocks.0")]
    block = blocks[0] if blocks else None
    if block is None:
        raise RuntimeError("could not find the first transformer block to count its parameters")
    per_block = sum(p.numel() for p in block.parameters() if p.dim() == 2)
    # attention: QK^T and AV, each 2 * d_model FLOPs per (query, key) pair; a causal context of
    # length T has on average (T + 1) / 2 keys per query.
    attn = 2 * 2 * model.d_model * (context_length + 1) / 2
    return n_blocks * (2 * per_block + attn)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=str(REPO / "config.yaml"))
    ap.add_argument("--model", default=None, help="model name in the config (default: first)")
    ap.add_argument("--tokens", type=int, default=8192, help="tokens to cache in the timed run")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg = validate_config(yaml.safe_load(Path(args.config).read_text()))
    name = args.model or next(iter(cfg["models"]))
    spec = cfg["models"][name]
    hook = spec["hooks"][0]
    model_dir = REPO / "resources" / "models" / name
    model = models.load_model(spec, "trained", model_dir=model_dir, name=name)
    T = cfg["tokens"]["context_length"]
    B = cfg["cache"]["batch_size"]
    n_ctx = max(B, args.tokens // T)
    rng = np.random.default_rng(0)
    ctx = rng.integers(100, min(model.tokenizer.vocab_size, 30000), size=(n_ctx, T))
    if model.tokenizer.bos_token_id is not None:
        ctx[:, 0] = model.tokenizer.bos_token_id

    rate = matmul_gflops()
    flops = forward_flops_per_token(model, hook, T)
    bound = rate * 1e9 / flops
    forward = model.forward_fn(hook)
    with tempfile.TemporaryDirectory() as tmp:
        forward(torch.from_numpy(ctx[:B]))  # warm-up
        t = time.perf_counter()
        activations.write_cache(Path(tmp) / "c", forward, ctx, d=model.d_model,
                                bos_token_id=model.tokenizer.bos_token_id, batch_size=B)
        elapsed = time.perf_counter() - t
    measured = n_ctx * T / elapsed
    print(f"model {name}, hook {hook}, {n_ctx} contexts x {T} tokens, batch {B}, "
          f"{torch.get_num_threads()} threads")
    print(f"matmul rate (fp32, 2048^3):       {rate:8.1f} GFLOP/s")
    print(f"forward FLOPs per token to hook:  {flops / 1e6:8.1f} MFLOP")
    print(f"FLOP-bound throughput:            {bound:8.0f} tokens/s")
    print(f"measured cache throughput:        {measured:8.0f} tokens/s (incl. writing)")
    print(f"ratio measured / bound:           {measured / bound:8.2f}")


if __name__ == "__main__":
    main()

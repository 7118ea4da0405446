"""Train one TopK SAE with SAELens's own trainer on pre-computed activations (a helper of
``bench/train_throughput.py``; run it with the interpreter of ``bench/.venv-saelens``).

SAELens's ``ActivationsStore`` needs a language model, but its ``SAETrainer`` takes any
``DataProvider`` (``Iterator[torch.Tensor]`` of (batch, d_in) activations); SAELens's own
``sae_lens.synthetic.training.train_toy_sae`` drives it the same way. So this script builds

    TopKTrainingSAE(TopKTrainingSAEConfig(d_in, d_sae, k, normalize_activations="none"))
    SAETrainer(cfg=SAETrainerConfig(...), sae=..., data_provider=<batches of the .npy file>)

and calls ``trainer.fit()`` (its training loop: ``training_forward_pass`` with the AuxK loss,
gradient-norm clipping at 1, ``torch.optim.Adam``, its LR scheduler, dead-latent bookkeeping),
timing ``fit()`` (and, as a check robust to other load on the machine, the median time between
two consecutive batch requests, i.e. one training step). The batches are rows
``data[order[i*B:(i+1)*B]] * scale``: the caller passes the same row order and input scale as
its own trainer uses. The trained SAE is written
with ``save_inference_model`` (decoder norms folded in; SAELens layout) to ``--out``, and a
``timing.json`` with the seconds and tokens/s next to it.

Usage (normally only from the bench):
    bench/.venv-saelens/bin/python bench/_saelens_runner.py --data X.npy --order O.npy \
        --scale S --d-sae 1152 --k 32 --batch-size 512 --lr 7.5e-4 --steps 351 --out DIR
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # the bench sets it for both trainers

import numpy as np  # noqa: E402
import torch  # noqa: E402
from sae_lens import __version__ as saelens_version  # noqa: E402
from sae_lens.config import LoggingConfig, SAETrainerConfig  # noqa: E402
from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig  # noqa: E402
from sae_lens.training.sae_trainer import SAETrainer  # noqa: E402


def batches(data: torch.Tensor, order: torch.Tensor, batch_size: int, scale: float,
            stamps: list[float]) -> Iterator[torch.Tensor]:
    """Rows of ``data`` in ``order``, ``batch_size`` at a time, multiplied by ``scale``.
    Appends the time of each request to ``stamps`` (the trainer asks once per step)."""
    for start in range(0, len(order) - batch_size + 1, batch_size):
        stamps.append(time.perf_counter())
        x = data[order[start:start + batch_size]]
        yield x.mul_(scale) if scale != 1.0 else x


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="(n, d_in) float32 .npy of raw activations")
    ap.add_argument("--order", required=True, help="int64 .npy: row order, >= steps*batch long")
    ap.add_argument("--scale", type=float, default=1.0, help="input scale applied to each batch")
    ap.add_argument("--d-sae", type=int, required=True)
    ap.add_argument("--k", type=int, required=True)
    ap.add_argument("--batch-size", type=int, required=True)
    ap.add_argument("--lr", type=float, required=True)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--schedule", choices=("default", "matched"), default="default",
                    help="default: SAELens's defaults (constant LR, no warm-up, no decay); "
                         "matched: linear warm-up over --warmup-steps and linear decay to 0 "
                         "over the last --decay-steps (the bench's own trainer's schedule)")
    ap.add_argument("--warmup-steps", type=int, default=0)
    ap.add_argument("--decay-steps", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0, help="torch seed for the SAE init")
    ap.add_argument("--out", required=True, help="directory for the SAE and timing.json")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    data = torch.from_numpy(np.load(args.data))
    order = torch.from_numpy(np.load(args.order).astype(np.int64))
    n_tokens = args.steps * args.batch_size
    if len(order) < n_tokens:
        raise SystemExit(f"--order has {len(order)} rows, fewer than steps*batch = {n_tokens}")
    d_in = data.shape[1]

    torch.manual_seed(args.seed)
    sae_cfg = TopKTrainingSAEConfig(d_in=d_in, d_sae=args.d_sae, k=args.k, dtype="float32",
                                    device="cpu", normalize_activations="none")
    sae = TopKTrainingSAE(sae_cfg)
    matched = args.schedule == "matched"
    if matched and args.warmup_steps + args.decay_steps > args.steps:
        raise SystemExit(f"--schedule matched needs warm-up + decay ({args.warmup_steps} + "
                         f"{args.decay_steps}) <= steps ({args.steps})")
    trainer_cfg = SAETrainerConfig(
        total_training_samples=n_tokens,
        train_batch_size_samples=args.batch_size,
        lr=args.lr,
        # LanguageModelSAERunnerConfig sets lr_end = lr / 10 (unused by the constant
        # scheduler); "matched" needs lr_end = lr so that the decay starts from lr
        lr_end=args.lr if matched else args.lr / 10,
        lr_scheduler_name="constant",
        lr_warm_up_steps=args.warmup_steps if matched else 0,
        lr_decay_steps=args.decay_steps if matched else 0,
        device="cpu",
        logger=LoggingConfig(log_to_wandb=False),
    )
    stamps: list[float] = []
    trainer = SAETrainer(cfg=trainer_cfg, sae=sae,
                         data_provider=batches(data, order, args.batch_size, args.scale,
                                               stamps))
    t0 = time.perf_counter()
    trainer.fit()
    seconds = time.perf_counter() - t0

    out = Path(args.out)
    sae.save_inference_model(out)
    info = {
        "sae_lens_version": saelens_version,
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
        "seconds": seconds,
        "steps": trainer.n_training_steps,
        "tokens": trainer.n_training_samples,
        "tokens_per_second": trainer.n_training_samples / seconds,
        "step_seconds_median": float(np.median(np.diff(stamps))) if len(stamps) > 1 else None,
        "schedule": args.schedule,
        "final_lr": trainer.optimizer.param_groups[0]["lr"],
        "dead_fraction": float(trainer.dead_neurons.float().mean()),
        "sae_cfg": {k: v for k, v in sae_cfg.to_dict().items()
                    if isinstance(v, (int, float, str, bool)) or v is None},
        "trainer_cfg": {k: v for k, v in vars(trainer_cfg).items()
                        if isinstance(v, (int, float, str, bool)) or v is None},
    }
    (out / "timing.json").write_text(json.dumps(info, indent=1) + "\n")
    print(json.dumps({k: info[k] for k in ("seconds", "steps", "tokens", "tokens_per_second")}))


if __name__ == "__main__":
    main()

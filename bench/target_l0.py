"""ReLU+L1 and JumpReLU steered to a target L0 on two models, without hand-tuning.

The penalty coefficient of these variants is in units that depend on the model, so their recipes
give a ``target_l0`` (the TopK k of the same study) and each seed's coefficient is steered to it
during training (:class:`saestab.sae.architecture.Penalised`). This trains, in one run:

* the default study's ``relu`` variant (``config.yaml``) on the default model's train cache, and
  a ``jumprelu`` variant with the same recipe (architecture swapped, its own default starting
  coefficient);
* the test configuration's ``relu`` variant (``tests/config.yaml``: the tiny native
  transformer, d = 32) and its ``jumprelu`` twin, on a cache of that model built here from the
  default corpus with the test configuration's token budget;

then evaluates every SAE on its model's eval cache and prints, per model and architecture, the
target, the reached L0 (mean over seeds, with the range), the starting and reached coefficients
and the ratio of L0 to the target (the acceptance band is 0.8-1.2). ``--epochs`` shortens the
default model's runs (the recipe's own length when not given); ``--seeds`` sets how many seeds
each configuration trains.

Needs the default run's cache and corpus (``make run`` writes both; ``--cache`` and
``--documents`` point elsewhere).

Usage: python bench/target_l0.py [--seeds 3] [--epochs E] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "workflow"))
from saestab import (  # noqa: E402
    activations,
    config,
    corpus,
    evaluation,
    logs,
    models,
    tokens,
    training,
)

CACHE = REPO / "results/smollm2/trained/blocks.15.hook_resid_post/cache"
DOCUMENTS = REPO / "resources/corpus/documents.jsonl"


def load_config(path: Path) -> dict[str, Any]:
    """A workflow configuration with the schema's defaults filled in."""
    return config.validate_config(yaml.safe_load(path.read_text()), source=str(path))


def tiny_caches(cfg: dict[str, Any], documents: Path, root: Path
                ) -> tuple[activations.ActivationCache, activations.ActivationCache, str]:
    """Train and eval caches of the test configuration's (only) native model, on ``documents``
    with its token and cache settings, built by the library functions the workflow's rules
    call."""
    (name, spec), = cfg["models"].items()
    hook = spec["hooks"][0]
    model = models.load_model(spec, "trained", name=name)
    tok, tc, cc = model.tokenizer, cfg["tokens"], cfg["cache"]
    split = tokens.tokenize_corpus(
        corpus.read_documents(documents), tok.encode, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, context_length=tc["context_length"],
        train_tokens=tc["train_tokens"], eval_tokens=tc["eval_tokens"], seed=tc["split_seed"],
        prepend_bos=tc["prepend_bos"], eval_documents=tc["eval_documents"])
    out = [activations.write_cache(
        root / part, model.forward_fn(hook), split[part]["contexts"], d=model.d_model,
        bos_token_id=tok.bos_token_id, batch_size=cc["batch_size"],
        outlier_factor=cc["outlier_factor"], dtype=cc["dtype"],
        meta={"model": name, "hook": hook, "split": part}) for part in ("train", "eval")]
    return out[0], out[1], name


def recipe(variants: dict[str, Any], arch: str, epochs: float | None) -> training.TrainConfig:
    """The study's ``relu`` variant, as ``arch``: the same recipe and target L0; a jumprelu
    twin starts from its own default coefficient (relu's L1 coefficient means nothing to it)."""
    r = {k: v for k, v in variants["relu"].items() if k != "vary_data_seed"}
    if r.get("target_l0") is None:
        raise SystemExit("the relu variant has no target_l0; nothing to measure")
    if arch == "jumprelu":
        r.pop("l1_coefficient", None)
    r["architecture"] = arch
    if epochs is not None:
        r.pop("n_tokens", None)
        r["n_epochs"] = epochs
    return training.TrainConfig(**r)


def measure(train: activations.ActivationCache, eval_cache: activations.ActivationCache,
            cfg: training.TrainConfig, seeds: list[int]) -> dict[str, Any]:
    t = time.perf_counter()
    res = training.train_group(train, cfg, seeds, 0,
                               training.RunOptions(snapshots_at_epochs=(), log_every=10**9))
    seconds = time.perf_counter() - t
    evals = [evaluation.evaluate_sae(sae, eval_cache) for sae in res.saes]
    reached = [sae.cfg.recipe["target_l0_reached"]["coefficient"] for sae in res.saes]
    start = res.saes[0].cfg.recipe[cfg.arch.coefficient_key]  # as resolved: the start
    return {"l0": np.array([e["l0"] for e in evals]), "ev": np.array([e["ev"] for e in evals]),
            "dead": np.array([e["dead_fraction"] for e in evals]), "start": start,
            "reached": np.array(reached), "steps": res.steps, "seconds": seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", default=str(CACHE), help="default model's cache (train/, eval/)")
    ap.add_argument("--documents", default=str(DOCUMENTS), help="corpus for the tiny model")
    ap.add_argument("--config", default=str(REPO / "config.yaml"))
    ap.add_argument("--tiny-config", default=str(REPO / "tests/config.yaml"))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=float, default=None,
                    help="training length on the default model (default: the recipe's)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logs.setup(None, level=30)
    seeds = list(range(args.seeds))
    default, tiny = load_config(Path(args.config)), load_config(Path(args.tiny_config))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        setups = [(activations.ActivationCache.open(Path(args.cache) / "train"),
                   activations.ActivationCache.open(Path(args.cache) / "eval"),
                   next(iter(default["models"])), default, args.epochs),
                  (*tiny_caches(tiny, Path(args.documents), Path(tmp)), tiny, None)]
        for train, ev, name, cfg, epochs in setups:
            label = f"{name} (d={train.d})"
            for arch in ("relu", "jumprelu"):
                c = recipe(cfg["sae"]["variants"], arch, epochs)
                m = measure(train, ev, c, seeds)
                rows.append((label, arch, c.target_l0, m))
                print(f"# {label} {arch}: {m['steps']} steps x {len(seeds)} seeds on "
                      f"{train.n_tokens} rows in {m['seconds']:.0f} s", flush=True)
    print(f"\n{'model':<22} {'arch':<9} {'target':>6} {'L0 eval [min, max]':>22} "
          f"{'coef start':>10} {'coef reached [min, max]':>26} {'L0/target':>9} {'EV':>6} "
          f"{'dead':>5}")
    for label, arch, target, m in rows:
        l0, co = m["l0"], m["reached"]
        print(f"{label:<22} {arch:<9} {target:>6g} "
              f"{l0.mean():>7.1f} [{l0.min():5.1f}, {l0.max():5.1f}] {m['start']:>10.3g} "
              f"{np.exp(np.log(co).mean()):>9.3g} [{co.min():7.3g}, {co.max():7.3g}] "
              f"{l0.mean() / target:>9.2f} {m['ev'].mean():>6.3f} {m['dead'].mean():>5.3f}")


if __name__ == "__main__":
    main()

"""What an SAE recipe (an entry of ``sae.variants``) must satisfy for its architecture, beyond what
the JSON schema checks.

Torch-free on purpose: every ``snakemake`` process checks the configuration with it before any
job runs (a dry run, the main process, each cluster job's own snakemake), and importing torch
there, through the architecture classes, took about half of a dry run's time. The architecture
classes (:mod:`saestab.sae`) take these properties from :data:`RULES` when they are registered,
so the two cannot disagree.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RecipeRules:
    """The properties of an architecture that decide which recipes are valid."""

    uses_k: bool = False
    """Trained with ``k`` active latents per token (the recipe must give ``k <= d_sae``)."""
    coefficient_key: str | None = None
    """The recipe key of the sparsity-penalty coefficient (None: no penalty to steer, so no
    ``target_l0`` mode)."""
    has_sparse_path: bool = False
    """Has a CSR decode for CPU (``decode: sparse``)."""
    nested_groups: bool = False
    """The latents form nested prefixes whose sizes (``matryoshka_groups``) sum to ``d_sae``."""


RULES: dict[str, RecipeRules] = {
    "relu": RecipeRules(coefficient_key="l1_coefficient", has_sparse_path=True),
    "topk": RecipeRules(uses_k=True, has_sparse_path=True),
    "batchtopk": RecipeRules(uses_k=True, has_sparse_path=True),
    # the prefix losses need the dense code
    "matryoshka": RecipeRules(uses_k=True, nested_groups=True),
    "jumprelu": RecipeRules(coefficient_key="l0_coefficient"),
}


def rules(architecture: str) -> RecipeRules:
    """The rules of ``architecture``; a ValueError naming the known ones if there are none."""
    try:
        return RULES[architecture]
    except KeyError:
        raise ValueError(f"unknown SAE architecture {architecture!r} (known: "
                         f"{', '.join(sorted(RULES))})") from None


def recipe_problems(recipe: Mapping[str, Any]) -> list[str]:
    """Cross-key problems of one recipe, as ``"key: reason"`` (empty: none)."""
    r = rules(recipe["architecture"])
    problems = _sparsity_problems(recipe, r)
    groups = recipe.get("matryoshka_groups")
    if r.nested_groups and groups and sum(groups) != recipe["d_sae"]:
        problems.append(f"matryoshka_groups: sizes sum to {sum(groups)}, not d_sae "
                        f"({recipe['d_sae']})")
    if recipe.get("decode") == "sparse" and not r.has_sparse_path:
        problems.append(f"decode: 'sparse' is not implemented for {recipe['architecture']!r}")
    return problems


def _sparsity_problems(recipe: Mapping[str, Any], r: RecipeRules) -> list[str]:
    """The first problem with how the recipe sets the sparsity (``k`` or ``target_l0``)."""
    name = recipe["architecture"]
    k = recipe.get("k")
    if r.uses_k and not k:
        return [f"k: required for architecture {name!r}"]
    if r.uses_k and k > recipe["d_sae"]:
        return [f"k: {k} exceeds d_sae ({recipe['d_sae']})"]
    target = recipe.get("target_l0")
    if target is not None and r.coefficient_key is None:
        return [f"target_l0: architecture {name!r} has no sparsity penalty to steer "
                f"(its L0 is set by k)"]
    if target is not None and target > recipe["d_sae"]:
        return [f"target_l0: {target} exceeds d_sae ({recipe['d_sae']})"]
    return []

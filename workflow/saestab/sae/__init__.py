"""Sparse autoencoders: one module per architecture, the saved model and its file format.

Layout:

* :mod:`.architecture`: the base class every architecture subclasses (stacked seeds, training
  loss, decoder-norm constraint, inference rule) and the registry (:func:`register`).
* :mod:`.relu`, :mod:`.topk`, :mod:`.batchtopk`, :mod:`.matryoshka`, :mod:`.jumprelu`: the
  architectures; :mod:`._sparse`: the CPU CSR path of the TopK family.
* :mod:`.model`: :class:`SAE`, one saved SAE for inference, and :class:`SAEConfig`.
* :mod:`.files`: saving, and loading our, SAELens's and sparsify's files.

A new architecture is a new module here whose class is decorated with :func:`register`
(imported below), plus its name in the schema's ``sae.variants.*.architecture`` enum and its
recipe rules (``k``, penalty key, sparse path) in :data:`saestab.recipes.RULES`, which the
configuration check reads without importing torch.
"""

from . import batchtopk, jumprelu, matryoshka, relu, topk  # noqa: F401  (they register)
from .architecture import (
    Architecture,
    StepOut,
    architectures,
    get_architecture,
    register,
    threshold_activation,
)
from .batchtopk import batch_topk_activation
from .files import CFG_FILE, SPARSIFY_WEIGHTS_FILE, WEIGHTS_FILE, load_sae, save_sae
from .model import (
    DTYPES,
    FORMAT,
    SAE,
    VERSION,
    SAEConfig,
    dtype_name,
    fold_input_scale,
    sae_from_tensors,
)
from .topk import topk_activation

ARCHITECTURES = architectures()
"""The built-in architectures (a later :func:`register` adds to :func:`architectures` only)."""
THRESHOLD_ARCHITECTURES = tuple(a for a in ARCHITECTURES if get_architecture(a).has_threshold)
"""Built-in architectures whose inference rule is ``pre > threshold``."""
K_ARCHITECTURES = tuple(a for a in ARCHITECTURES if get_architecture(a).uses_k)
"""Built-in architectures trained with a ``k``."""

__all__ = [
    "ARCHITECTURES", "CFG_FILE", "DTYPES", "FORMAT", "K_ARCHITECTURES", "SAE",
    "SPARSIFY_WEIGHTS_FILE", "THRESHOLD_ARCHITECTURES", "VERSION", "WEIGHTS_FILE",
    "Architecture", "SAEConfig", "StepOut", "architectures", "batch_topk_activation",
    "dtype_name", "fold_input_scale", "get_architecture", "load_sae", "register",
    "sae_from_tensors", "save_sae", "threshold_activation", "topk_activation",
]

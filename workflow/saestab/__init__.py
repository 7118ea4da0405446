"""saestab: seed stability of sparse-autoencoder features.

The library behind the workflow. Every stage can be used without Snakemake, e.g.::

    from saestab import activations, stability
    cache = activations.ActivationCache.open("results/.../cache/train")
    result = stability.stability(["seed0", "seed1", "seed2"])  # SAE directories
"""

__version__ = "0.1.0"

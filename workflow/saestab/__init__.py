"""saestab: seed stability of sparse-autoencoder features.

The library behind the workflow. Every stage can be used without Snakemake, e.g.::

    from saestab import activations
    cache = activations.ActivationCache.open("results/smollm2/trained/blocks.15.hook_resid_post/cache/train")
"""

__version__ = "0.1.0"

"""The multi-seed SAE trainer.

* :mod:`.config`: the recipe (:class:`TrainConfig`) and the learning-rate schedule.
* :mod:`.data`: the training rows, streamed from the cache in a seeded shuffled order.
* :mod:`.loop`: :func:`train_group`, in stages: data, model, loop, snapshots, export.
* :mod:`.checkpoint`: model, optimiser and scheduler state, resumed only for the same run.
* :mod:`.job`: one workflow job: a clean work area, the outputs' manifest, their check.
"""

from .checkpoint import CHECKPOINT_FORMAT, fingerprint
from .config import (
    DEAD_WINDOW_TOKENS,
    DEFAULT_EPOCHS,
    IMPL_FIELDS,
    NORMALIZATIONS,
    TrainConfig,
    input_scale,
    lr_factor,
)
from .data import ShuffledStream
from .job import (
    MANIFEST,
    Job,
    check_outputs,
    finish_job,
    manifest_dirs,
    prepare_work_dir,
    remove_temporaries,
    train_job,
)
from .loop import (
    RunOptions,
    TrainResult,
    build_model,
    decay_fork_step,
    decoder_init_cosine,
    geometric_median,
    make_optimizer,
    prepare_data,
    train_group,
    train_step,
)

__all__ = [
    "CHECKPOINT_FORMAT", "DEAD_WINDOW_TOKENS", "DEFAULT_EPOCHS", "IMPL_FIELDS", "MANIFEST",
    "NORMALIZATIONS", "Job", "RunOptions", "ShuffledStream", "TrainConfig", "TrainResult",
    "build_model", "check_outputs", "decay_fork_step", "decoder_init_cosine", "fingerprint",
    "finish_job", "geometric_median", "input_scale", "lr_factor", "make_optimizer",
    "manifest_dirs", "prepare_data", "prepare_work_dir", "remove_temporaries", "train_group",
    "train_job", "train_step",
]

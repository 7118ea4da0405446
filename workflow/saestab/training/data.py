"""Training rows in a seeded, shuffled order, read from the activation cache a window at a time.

The order of epoch ``e`` is a function of ``(data_seed, e)`` and the cache's size only:

1. the cache's rows are cut into contiguous blocks of ``shuffle_block`` rows (the last one may be
   shorter), and the blocks are permuted;
2. consecutive runs of ``shuffle_window // shuffle_block`` blocks (at least one) of that
   permutation form the epoch's windows;
3. the rows of each window are permuted, seeded by ``(data_seed, e, window)``.

Batches are consecutive slices of that order; an epoch's last partial batch is dropped. The
batch of any step is therefore known from the step alone: resuming needs no data state besides
the step, and a decay branch forked at a step reads the same batches the main run reads there.
Only two windows are in memory at a time (the one being consumed and the next, read by a
background thread while the current one trains), so peak memory does not grow with the cache.
A window is held in block order with its shuffled order as indices; each batch is gathered
through them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from ..activations import ActivationCache


@dataclass(frozen=True)
class Window:
    """One window of an epoch: which cache blocks it holds and where it sits in the order."""

    epoch: int
    index: int
    blocks: np.ndarray  # block ids, in the epoch's block order
    start: int  # first row of the window in the epoch's order
    n_rows: int


class ShuffledStream:
    """Batches of scaled float32 training rows in the order described in the module docstring.

    ``scale`` multiplies every row (the trainer's normalisation); rows are put on ``device``.
    """

    def __init__(self, cache: ActivationCache, batch_size: int, data_seed: int, *,
                 shuffle_block: int, shuffle_window: int, scale: float = 1.0,
                 device: torch.device | str = "cpu"):
        if batch_size < 1 or shuffle_block < 1 or shuffle_window < 1:
            raise ValueError(f"batch_size, shuffle_block and shuffle_window must be positive, "
                             f"got {batch_size}, {shuffle_block}, {shuffle_window}")
        self.cache = cache
        self.n = cache.n_tokens
        self.batch_size = batch_size
        self.data_seed = int(data_seed)
        self.block = int(shuffle_block)
        self.blocks_per_window = max(1, int(shuffle_window) // self.block)
        self.scale = float(scale)
        self.device = torch.device(device)
        self.n_blocks = math.ceil(self.n / self.block)
        self.steps_per_epoch = self.n // batch_size

    # -- the order ---------------------------------------------------------------------------
    def windows(self, epoch: int) -> list[Window]:
        """The windows of ``epoch`` in order."""
        order = np.random.default_rng([self.data_seed, int(epoch)]).permutation(self.n_blocks)
        out, start = [], 0
        for w, lo in enumerate(range(0, self.n_blocks, self.blocks_per_window)):
            blocks = order[lo:lo + self.blocks_per_window]
            n_rows = int(self.block_sizes(blocks).sum())
            out.append(Window(epoch=int(epoch), index=w, blocks=blocks, start=start,
                              n_rows=n_rows))
            start += n_rows
        return out

    def block_sizes(self, blocks: np.ndarray) -> np.ndarray:
        """Rows in each of ``blocks`` (the cache's last block may be short)."""
        return np.minimum(self.block, self.n - blocks * self.block)

    def _permutation(self, window: Window, n_rows: int) -> np.ndarray:
        return np.random.default_rng([self.data_seed, window.epoch, window.index]
                                     ).permutation(n_rows)

    def epoch_rows(self, epoch: int) -> np.ndarray:
        """The cache rows of ``epoch`` in the order they are read (all of them; the trainer
        drops the last ``n % batch_size``)."""
        parts = []
        for w in self.windows(epoch):
            idx = np.concatenate([np.arange(int(b) * self.block, min((int(b) + 1) * self.block,
                                                                     self.n)) for b in w.blocks])
            parts.append(idx[self._permutation(w, len(idx))])
        return np.concatenate(parts)

    def read(self, window: Window) -> tuple[torch.Tensor, torch.Tensor]:
        """The rows of ``window`` in block order, unscaled, on the device, and the window's
        shuffled order as indices into them (int64, on the device). The blocks are copied
        contiguously; :meth:`batches` gathers each batch through the order and scales it, which
        costs a batch-sized pass instead of a window-sized scatter and scale."""
        out = np.empty((window.n_rows, self.cache.d), dtype=np.float32)
        pos = 0
        for b, size in zip(window.blocks, self.block_sizes(window.blocks), strict=True):
            self.cache.load(int(b) * self.block, int(b) * self.block + int(size),
                            out=out[pos:pos + size])
            pos += int(size)
        rows = torch.from_numpy(out)
        order = torch.from_numpy(self._permutation(window, window.n_rows))
        if self.device.type == "cuda":
            rows = rows.pin_memory().to(self.device, non_blocking=True)
        return rows.to(self.device), order.to(self.device)

    def _gather(self, rows: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        x = rows.index_select(0, idx)
        return x.mul_(self.scale) if self.scale != 1.0 else x

    # -- batches -----------------------------------------------------------------------------
    def batches(self, start: int, stop: int) -> Iterator[torch.Tensor]:
        """The batches of steps ``start .. stop-1``, reading the next window in the background."""
        plan = list(self._plan(start, stop))
        if not plan:
            return
        b = self.batch_size
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="stream") as pool:
            pending: Future[tuple[torch.Tensor, torch.Tensor]] = pool.submit(self.read,
                                                                            plan[0][0])
            step = start
            carry: torch.Tensor | None = None  # rows of a batch begun in the previous window
            for i, (window, skip) in enumerate(plan):
                rows, order = pending.result()
                if i + 1 < len(plan):
                    pending = pool.submit(self.read, plan[i + 1][0])
                order = order[skip:]
                if window.index == 0:
                    carry = None  # a new epoch: its predecessor's partial batch is dropped
                pos = 0
                if carry is not None and len(carry):
                    pos = min(b - len(carry), len(order))
                    carry = torch.cat([carry, self._gather(rows, order[:pos])])
                    if len(carry) == b and step < stop:
                        yield carry
                        step += 1
                        carry = None
                while pos + b <= len(order) and step < stop:
                    yield self._gather(rows, order[pos:pos + b])
                    pos += b
                    step += 1
                if carry is None or not len(carry):
                    carry = self._gather(rows, order[pos:])

    def _plan(self, start: int, stop: int) -> Iterator[tuple[Window, int]]:
        """The windows that steps ``start .. stop-1`` read, each with the number of leading rows
        to skip (non-zero only in the first window, when ``start`` falls inside it)."""
        if start >= stop:
            return
        epoch, pos = divmod(start, self.steps_per_epoch)
        row = pos * self.batch_size
        last_epoch, last_pos = divmod(stop - 1, self.steps_per_epoch)
        last_row = (last_pos + 1) * self.batch_size
        while epoch <= last_epoch:
            for w in self.windows(epoch):
                end = w.start + w.n_rows
                if end <= row:
                    continue
                if epoch == last_epoch and w.start >= last_row:
                    break
                yield w, max(0, row - w.start)
                row = end
            epoch, row = epoch + 1, 0

    def sample(self, n: int) -> torch.Tensor:
        """``n`` evenly spaced rows of the cache (scaled, on the device): a fixed, order-free
        sample for statistics such as the decoder-bias initialisation."""
        idx = np.linspace(0, self.n - 1, min(self.n, n)).astype(np.int64)
        x = torch.from_numpy(self.cache.rows(idx))
        if self.scale != 1.0:
            x.mul_(self.scale)
        return x.to(self.device)

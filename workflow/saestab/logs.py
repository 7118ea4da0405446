"""Logging and progress reporting that land in a rule's log file as well as on stderr."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def setup(log_path: str | os.PathLike | None = None, level: int = logging.INFO) -> logging.Logger:
    """Configure the ``saestab`` logger to write to ``log_path`` (if given) and stderr.

    Call once at the top of a rule's script with ``snakemake.log[0]``. With a log file, an
    exception that ends the script is also written there with its traceback (see
    :func:`log_uncaught_exceptions`).
    """
    logger = logging.getLogger("saestab")
    logger.setLevel(level)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(fmt)
    logger.addHandler(stderr)
    if log_path is not None:
        os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
        fh = logging.FileHandler(log_path, mode="w")
        fh.setFormatter(fmt)
        logger.addHandler(fh)
    logger.propagate = False
    if log_path is not None:
        log_uncaught_exceptions(logger)
    return logger


def log_uncaught_exceptions(logger: logging.Logger) -> None:
    """Write the traceback of an exception that ends the process to ``logger``'s log files.

    Snakemake shows a rule's log file (``--show-failed-logs``, SLURM job logs), not the stderr
    of its script, so without this a failed job's log ends without the error. The record goes
    to the file handlers only (the default hook still prints it once to stderr). Installed as
    ``sys.excepthook``: it sees every uncaught exception of the main thread, which is where a
    rule's script runs, without wrapping each script's body.
    """

    def hook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        record = logger.makeRecord(logger.name, logging.ERROR, "(uncaught)", 0,
                                   "job failed with %s", (exc_type.__name__,),
                                   (exc_type, exc, tb))
        for handler in logger.handlers:
            if isinstance(handler, logging.FileHandler):
                handler.handle(record)
        sys.__excepthook__(exc_type, exc, tb)

    sys.excepthook = hook


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name if name.startswith("saestab") else f"saestab.{name}")


def _fmt_seconds(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def progress(iterable: Iterable[T], total: int | None = None, desc: str = "", unit: str = "it",
             every: float = 15.0, logger: logging.Logger | None = None) -> Iterator[T]:
    """Iterate with a progress report: a tqdm bar on an interactive stderr, and a plain log line
    (done/total, rate, ETA) every ``every`` seconds through the ``saestab`` logger, so that a
    Snakemake rule's log file shows where a long job is."""
    logger = logger or get_logger("progress")
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    bar = tqdm(iterable, total=total, desc=desc, unit=unit, file=sys.stderr,
               disable=not sys.stderr.isatty(), mininterval=1.0)
    start = last = time.perf_counter()
    done = 0
    for item in bar:
        yield item
        done += 1
        now = time.perf_counter()
        final = total is not None and done == total and now - start >= 2.0
        if now - last >= every or final:
            rate = done / max(now - start, 1e-9)
            if total:
                eta = (total - done) / rate if rate > 0 else float("inf")
                logger.info("%s: %d/%d %s (%.0f%%), %.2f %s/s, elapsed %s, eta %s", desc, done,
                            total, unit, 100 * done / total, rate, unit,
                            _fmt_seconds(now - start), _fmt_seconds(eta))
            else:
                logger.info("%s: %d %s, %.2f %s/s", desc, done, unit, rate, unit)
            last = now

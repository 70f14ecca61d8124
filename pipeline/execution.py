"""Where per-bucket work runs: subject buckets and the executors that map pure functions over them.

Work that scales is written as a pure function of ONE BUCKET (all rows of some whole subjects)
returning a small result (sums, p x p matrices, per-subject rows), plus a reduction on the driver.
This module is the only code that knows where buckets live and run:

- ``subject_buckets``: a stable bucket number per subject: the first 8 bytes of blake2b of the
  UTF-8 subject id, modulo the bucket count. It depends on neither the polars version, nor the
  machine, nor the process (Python's ``hash`` and polars' ``Expr.hash`` are not stable across
  versions or runs), and it is computed once per unique subject, not per row.
- ``bucket_count``: how many buckets for a dataset of a given size (memory per bucket bounded).
- ``LocalExecutor``: a thread pool sized to the cores (numpy's BLAS, ufuncs and reductions and
  polars release the GIL, so threads use both cores without copying buckets between processes).
- ``DaskExecutor``: the same ``map`` as Dask distributed tasks, on the scheduler at ``--scheduler
  ADDRESS`` or ``$DASK_SCHEDULER_ADDRESS``, else on a ``LocalCluster`` it starts.

Both have ``scatter(items) -> handles`` (place bucket data where the work runs: a no-op locally,
``Client.scatter`` on Dask, so data is shipped once, not per iteration),
``map(fn, handles, *args) -> list`` (results in bucket order, so reductions are deterministic)
and ``apply(fn, handles, *args) -> handles`` (results left where they were computed, e.g. a
subsample of each bucket).
The estimators receive an executor and never learn where a bucket came from.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Protocol

import numpy as np
import polars as pl

from pipeline.errors import UserError

#: Environment variable naming a Dask scheduler (``tcp://host:8786``) for ``--executor dask``.
SCHEDULER_ENV = "DASK_SCHEDULER_ADDRESS"
#: Environment variable overriding the cores a local executor uses (shared machines).
THREADS_ENV = "CRAMP_FIT_THREADS"
#: Subject-days per bucket the bucket count aims at: a bucket's panel and design (a few dozen
#: float64 columns) then take well under 1 GiB, whatever the dataset's size.
TARGET_ROWS_PER_BUCKET = 1_000_000
ROWS_PER_BUCKET_ENV = "CRAMP_ROWS_PER_BUCKET"
#: Bounds on the bucket count: at least one; at most this many (manifest and task overheads).
MAX_BUCKETS = 4096
EXECUTORS = ("local", "dask")
#: A fit of a design the driver already holds in memory, of at most this many MiB, runs on the
#: driver's own cores even on a Dask cluster (:func:`for_design`): the dose-response curves,
#: the lag model and the subgroup refits are such fits, on subsets gathered from the panel, and
#: shipping a few hundred MB to the workers for each of them costs more than the fit itself
#: (measured: the 10,000-subject run on a 2-worker LocalCluster, docs/scaling.md). 0 sends every
#: fit to the executor. Fits of the bucketed panel's designs never come here: their buckets are
#: files the workers read themselves.
DRIVER_FIT_MB = 256
DRIVER_FIT_ENV = "CRAMP_DRIVER_FIT_MB"
#: Seconds to wait for a Dask scheduler named by --scheduler before giving up with a message.
SCHEDULER_TIMEOUT_S = 10


def stable_hash(value: str) -> int:
    """A 64-bit hash of ``value``'s UTF-8 bytes, identical on every machine and version."""
    return int.from_bytes(hashlib.blake2b(value.encode("utf-8"), digest_size=8).digest(), "little")


def bucket_of(subject_id: str, n_buckets: int) -> int:
    """The bucket of one subject id."""
    return stable_hash(subject_id) % n_buckets


def subject_buckets(ids: pl.Series, n_buckets: int) -> pl.Series:
    """Bucket number (UInt32) per row of ``ids``, hashing each UNIQUE id once (a subject with
    365 rows costs one hash, and a join maps the rows)."""
    if n_buckets < 1:
        raise ValueError("n_buckets must be at least 1")
    ids = ids.cast(pl.String)
    unique = ids.unique()
    numbers = pl.Series("_bucket", [bucket_of(s, n_buckets) if s is not None else 0
                                    for s in unique.to_list()], dtype=pl.UInt32)
    lookup = pl.DataFrame({"_id": unique, "_bucket": numbers})
    out = pl.DataFrame({"_id": ids}).join(lookup, on="_id", how="left", maintain_order="left")
    return out["_bucket"].alias("bucket")


def bucket_count(n_rows: int, rows_per_bucket: int | None = None) -> int:
    """Buckets for ``n_rows`` subject-days: about ``rows_per_bucket`` each (default
    ``TARGET_ROWS_PER_BUCKET``, or ``$CRAMP_ROWS_PER_BUCKET``: smaller buckets for workers with
    less memory; memory per worker is bounded by the largest bucket, see docs/scaling.md)."""
    if rows_per_bucket is None:
        wanted = os.environ.get(ROWS_PER_BUCKET_ENV, "").strip()
        rows_per_bucket = int(wanted) if wanted.isdigit() and int(wanted) > 0 else \
            TARGET_ROWS_PER_BUCKET
    return int(min(MAX_BUCKETS, max(1, -(-int(n_rows) // rows_per_bucket))))


def split_by_bucket(frame: pl.DataFrame, id_column: str, n_buckets: int) -> list[pl.DataFrame]:
    """``frame`` split into ``n_buckets`` frames of whole subjects (bucket 0 first; a bucket may
    be empty), each keeping the input's row order."""
    b = subject_buckets(frame[id_column], n_buckets)
    parts = frame.with_columns(b).partition_by("bucket", as_dict=True, maintain_order=True)
    empty = frame.clear()
    return [parts[(i,)].drop("bucket") if (i,) in parts else empty for i in range(n_buckets)]


def cores() -> int:
    """Cores this process may use (``CRAMP_FIT_THREADS`` overrides, e.g. 1 on a busy machine)."""
    wanted = os.environ.get(THREADS_ENV, "").strip()
    if wanted.isdigit() and int(wanted) > 0:
        return int(wanted)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class Executor(Protocol):
    """Maps pure per-bucket functions; the only thing that knows where buckets run."""

    #: Parallel slots (threads or Dask worker threads): callers size their buckets from it.
    workers: int

    def scatter(self, items: Sequence[Any]) -> list[Any]: ...

    def map(self, fn: Callable, handles: Sequence[Any], *args: Any) -> list[Any]: ...

    def apply(self, fn: Callable, handles: Sequence[Any], *args: Any) -> list[Any]: ...

    def close(self) -> None: ...


_IN_POOL = threading.local()


class Cancelled(KeyboardInterrupt):
    """Raised in a worker thread at its next bucket once the caller was interrupted (Ctrl-C):
    a thread cannot be stopped from outside, so every bucket function checks before it starts
    (:func:`raise_if_cancelled`) and an interrupted run ends within one bucket's pass instead of
    finishing every queued fit first."""


_CANCEL = threading.Event()
#: Seconds between the checks for Ctrl-C of a driver waiting for side-by-side tasks.
_POLL_S = 0.2


def raise_if_cancelled() -> None:
    """Raise :class:`Cancelled` if the run this thread works for was interrupted."""
    if _CANCEL.is_set():
        raise Cancelled()


@contextlib.contextmanager
def _cancel_on_interrupt(pool: ThreadPoolExecutor) -> Iterator[None]:
    """On Ctrl-C in the waiting (main) thread: cancel the queued tasks, make the running ones stop
    at their next bucket, wait for them to stop, and re-raise. The flag is cleared afterwards, so a
    long-lived process (a notebook's kernel) can run again."""
    try:
        yield
    except KeyboardInterrupt:
        _CANCEL.set()
        try:
            pool.shutdown(wait=True, cancel_futures=True)
        finally:
            _CANCEL.clear()
        raise


def _in_pool(fn: Callable, handle: Any, *args: Any) -> Any:
    raise_if_cancelled()
    _IN_POOL.active = True
    try:
        return fn(handle, *args)
    finally:
        _IN_POOL.active = False


def _inline(fn: Callable, handle: Any, *args: Any) -> Any:
    raise_if_cancelled()
    return fn(handle, *args)


class LocalExecutor:
    """A thread pool on this machine, sized to its cores.

    Threads rather than processes: the per-bucket work is numpy and polars, which release the GIL,
    so two threads keep two cores busy without pickling buckets between processes
    (benchmarks/bench_execution.py compares one thread, this pool and a Dask LocalCluster on the
    same fit). ``workers=1`` runs inline, in order."""

    def __init__(self, workers: int | None = None):
        self.workers = max(1, workers or cores())
        self._pool = ThreadPoolExecutor(self.workers) if self.workers > 1 else None

    def scatter(self, items: Sequence[Any]) -> list[Any]:
        return list(items)

    def map(self, fn: Callable, handles: Sequence[Any], *args: Any) -> list[Any]:
        # Inline when there is nothing to share out, or when called from a bucket function
        # already running on a pool thread (a nested map waiting on the pool could deadlock).
        if self._pool is None or len(handles) <= 1 or getattr(_IN_POOL, "active", False):
            return [_inline(fn, h, *args) for h in handles]
        return list(self._pool.map(lambda h: _in_pool(fn, h, *args), handles))

    def apply(self, fn: Callable, handles: Sequence[Any], *args: Any) -> list[Any]:
        """``fn`` per bucket, results kept as new bucket handles (here: the results)."""
        return self.map(fn, handles, *args)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def __repr__(self) -> str:
        return f"LocalExecutor(workers={self.workers})"


class DaskExecutor:
    """Per-bucket work as Dask distributed tasks.

    ``address`` (or ``$DASK_SCHEDULER_ADDRESS``) names a running scheduler; without one a
    ``LocalCluster`` of ``n_workers`` single-threaded worker processes is started here (and
    closed by ``close``). ``scatter`` places bucket data on the workers once; every later ``map``
    sends only its small arguments (coefficients) and gathers the small results."""

    def __init__(self, address: str | None = None, *, n_workers: int | None = None,
                 threads_per_worker: int = 1):
        try:
            from distributed import Client, LocalCluster
        except ImportError:  # pragma: no cover - dask is a runtime dependency
            raise UserError("--executor dask needs the 'distributed' package") from None
        address = address or os.environ.get(SCHEDULER_ENV) or None
        self._cluster = None
        if address:
            try:
                self.client = Client(address, timeout=f"{SCHEDULER_TIMEOUT_S}s")
            except (OSError, TimeoutError) as exc:
                raise UserError(f"cannot reach the Dask scheduler at {address}: {exc}") from None
        else:
            self._cluster = LocalCluster(n_workers=n_workers or min(cores(), 4),
                                         threads_per_worker=threads_per_worker,
                                         processes=True, dashboard_address=":0",
                                         silence_logs=logging.ERROR)
            self.client = Client(self._cluster)
        self.workers = max(1, sum(self.client.nthreads().values()))

    def scatter(self, items: Sequence[Any]) -> list[Any]:
        # Spread buckets over the workers round-robin (hash=False: equal arrays stay distinct).
        return self.client.scatter(list(items), hash=False)

    def map(self, fn: Callable, handles: Sequence[Any], *args: Any) -> list[Any]:
        return self.client.gather(self.apply(fn, handles, *args))

    def apply(self, fn: Callable, handles: Sequence[Any], *args: Any) -> list[Any]:
        """``fn`` per bucket on the workers holding the buckets; the results stay there (as
        futures: new bucket handles, e.g. a subsample), nothing is gathered."""
        scattered = [self.client.scatter(a, broadcast=True, hash=False)
                     if isinstance(a, np.ndarray) and a.size > 10_000 else a for a in args]
        return self.client.map(fn, handles, *[[a] * len(handles) for a in scattered],
                               pure=False)

    def close(self) -> None:
        self.client.close()
        if self._cluster is not None:
            self._cluster.close()

    def __repr__(self) -> str:
        return f"DaskExecutor({self.client.scheduler.address}, workers={self.workers})"


def make_executor(kind: str = "local", scheduler: str | None = None) -> Executor:
    """The executor named on the command line (``--executor local|dask [--scheduler ADDR]``)."""
    if kind == "local":
        if scheduler:
            raise UserError("--scheduler is only used with --executor dask")
        return LocalExecutor()
    if kind == "dask":
        return DaskExecutor(scheduler)
    raise UserError(f"unknown executor {kind!r}: choose one of {', '.join(EXECUTORS)}")


def concurrently(tasks: Sequence[Callable[[], Any]], workers: int | None = None) -> list[Any]:
    """Run independent driver-side tasks side by side (results in task order).

    For work made of several small fits (the dose-response curves, the subgroup refits): each
    task drives its own fit, whose passes go to the run's executor as usual, but a fit on a few
    hundred thousand subject-days is one bucket, so fits side by side are what keeps both cores
    busy. Threads (numpy and polars release the GIL); each task sees the caller's executor (its
    own copy of the context), BLAS is held to one thread per task while they run, and an
    exception in a task is raised here after the others finish. ``workers`` defaults to the
    cores (``CRAMP_FIT_THREADS``); 1 runs the tasks in order, in this thread. Ctrl-C while
    they run cancels the tasks not yet started and stops the running ones at their next bucket
    (:class:`Cancelled`), then raises ``KeyboardInterrupt`` here."""
    tasks = list(tasks)
    n = min(len(tasks), max(1, workers or cores()))
    if n <= 1:
        return [task() for task in tasks]
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(n) as pool, \
            _cancel_on_interrupt(pool):
        futures = [pool.submit(contextvars.copy_context().run, _started, task) for task in tasks]
        return [_result(f) for f in futures]


def _result(future) -> Any:
    """``future.result()``, woken every ``_POLL_S`` seconds: once polars is imported, a blocking
    wait in the main thread is not interrupted by SIGINT (measured: Ctrl-C was seen only when
    the waited-for task ended), so the wait returns to Python often enough to see Ctrl-C."""
    while True:
        try:
            return future.result(timeout=_POLL_S)
        except FutureTimeout:
            continue


def _started(task: Callable[[], Any]) -> Any:
    raise_if_cancelled()
    return task()


_CURRENT: contextvars.ContextVar[Executor | None] = contextvars.ContextVar("executor",
                                                                            default=None)
_DEFAULT: list[LocalExecutor] = []


def current() -> Executor:
    """The executor of the enclosing ``using`` block, else a shared local thread pool: every
    estimator call (including models other modules add) runs on the run's executor."""
    ex = _CURRENT.get()
    return ex if ex is not None else _default_local()


def _default_local() -> LocalExecutor:
    """The shared local thread pool (rebuilt when ``CRAMP_FIT_THREADS`` changed)."""
    if not _DEFAULT or _DEFAULT[0].workers != cores():
        _DEFAULT[:] = [LocalExecutor()]
    return _DEFAULT[0]


def driver_fit_bytes() -> int:
    """Bytes up to which an in-memory design is fitted on the driver (``$CRAMP_DRIVER_FIT_MB``,
    default ``DRIVER_FIT_MB``)."""
    wanted = os.environ.get(DRIVER_FIT_ENV, "").strip()
    mb = int(wanted) if wanted.isdigit() else DRIVER_FIT_MB
    return mb * 2 ** 20


def for_design(nbytes: int) -> Executor:
    """Where to fit a design of ``nbytes`` that the driver holds in memory: the run's executor,
    except that a small design on a remote executor (Dask) is fitted with the driver's local
    pool, where the data already are. The results do not depend on it (same sums, bucketed
    differently: within summation order)."""
    ex = current()
    if isinstance(ex, LocalExecutor) or nbytes > driver_fit_bytes():
        return ex
    return _default_local()


@contextlib.contextmanager
def using(executor: Executor) -> Iterator[Executor]:
    """Run the enclosed stages on ``executor``."""
    token = _CURRENT.set(executor)
    try:
        yield executor
    finally:
        _CURRENT.reset(token)


@contextlib.contextmanager
def session(kind: str = "local", scheduler: str | None = None) -> Iterator[Executor]:
    """Start the executor named on the command line, run the enclosed stages on it, close it."""
    executor = make_executor(kind, scheduler)
    try:
        with using(executor):
            yield executor
    finally:
        executor.close()

"""Executors: run many specs, stream outcomes back as they finish, lose none.

One small interface, three implementations:

- :class:`SerialPool`: in this process, one run at a time (tests, ``--jobs 1``);
- :class:`LocalPool`: a ``ProcessPoolExecutor`` over every local core
  (``spawn`` start method: polars and forked threads do not mix);
- :class:`RayPool`: tasks on an existing Ray cluster (``address``, or
  ``"auto"``), or on a local Ray instance it starts (``"local"``).

``imap_unordered(specs)`` yields a :class:`~driftsim.capacity.runner.RunOutcome`
per spec as runs finish; ``run(specs, on_result)`` returns them in spec
order. A run whose worker raised or died is retried up to ``retries`` times
(runs are pure functions of their spec, so a retry is safe); one that still
fails comes back as a failed outcome carrying the error, never dropped.
Bad input is not retried: :func:`~driftsim.capacity.runner.execute` returns it as
a failed outcome at once.

NOTE: when a local worker process dies, ``ProcessPoolExecutor`` fails every
run then in flight (it cannot tell which one crashed); each is charged one
attempt and resubmitted to a fresh pool.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, Iterator, Sequence

from driftsim.capacity.runner import RunOutcome, execute, failed
from driftsim.capacity.spec import RunSpec
from driftsim.sim.config import ConfigError

RAY_HINT = "install it with: pip install 'driftsim[ray]' (or pip install 'ray[default]>=2.40')"


class Pool:
    """Runs specs; see the module docstring. Subclasses implement :meth:`_imap`."""

    name = "pool"
    workers = 1
    retries = 2

    def _imap(self, specs: Sequence[RunSpec]) -> Iterator[tuple[int, RunOutcome]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def imap_unordered(self, specs: Sequence[RunSpec]) -> Iterator[RunOutcome]:
        """Outcomes in the order runs finish."""
        for _, out in self._imap(list(specs)):
            yield out

    def run(self, specs: Sequence[RunSpec], on_result: Callable[[RunOutcome], None] | None = None) -> list[RunOutcome]:
        """Every spec's outcome, in spec order; ``on_result`` is called as each finishes (for progress)."""
        specs = list(specs)
        out: list[RunOutcome | None] = [None] * len(specs)
        for pos, o in self._imap(specs):
            out[pos] = o
            if on_result is not None:
                on_result(o)
        return out  # type: ignore[return-value]

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def describe(self) -> str:
        return f"{self.name} ({self.workers} worker{'s' if self.workers != 1 else ''})"


def _error_text(exc: BaseException) -> str:
    """A one-line error: Ray's task errors carry the whole remote traceback; keep the cause."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        exc = cause
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    text = lines[-1] if type(exc).__name__ == "RayTaskError" and lines else (lines[0] if lines else "")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class SerialPool(Pool):
    """Runs in this process, one at a time, with the same retry rule as the others."""

    name = "serial"

    def __init__(self, *, retries: int = 2) -> None:
        self.retries = retries

    def _imap(self, specs):
        for pos, spec in enumerate(specs):
            for attempt in range(1, self.retries + 2):
                try:
                    out = execute(spec)
                except Exception as exc:  # noqa: BLE001 - any crash is retried, then reported
                    if attempt <= self.retries:
                        continue
                    out = failed(spec, f"failed after {attempt} attempts: {_error_text(exc)}", attempts=attempt)
                out.attempts = attempt
                yield pos, out
                break


class LocalPool(Pool):
    """Every local core (``workers`` processes, default ``os.cpu_count()``)."""

    name = "local processes"

    def __init__(self, workers: int | None = None, *, retries: int = 2, max_in_flight: int | None = None) -> None:
        self.workers = int(workers or os.cpu_count() or 1)
        if self.workers < 1:
            raise ConfigError(f"--jobs: expected at least 1 worker, got {workers}")
        self.retries = retries
        self.max_in_flight = max_in_flight or 4 * self.workers
        self._ex: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._ex is None:
            self._ex = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
        return self._ex

    def _reset(self) -> None:
        if self._ex is not None:
            self._ex.shutdown(wait=False, cancel_futures=True)
        self._ex = None

    def _imap(self, specs):
        queue = deque(enumerate(specs))
        attempts: dict[int, int] = {}
        pending: dict = {}
        try:
            while queue or pending:
                while queue and len(pending) < self.max_in_flight:
                    pos, spec = queue.popleft()
                    try:
                        fut = self._executor().submit(execute, spec)
                    except BrokenProcessPool:
                        self._reset()
                        fut = self._executor().submit(execute, spec)
                    pending[fut] = (pos, spec)
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                broken = False
                for fut in done:
                    pos, spec = pending.pop(fut)
                    n = attempts[pos] = attempts.get(pos, 0) + 1
                    try:
                        out = fut.result()
                    except Exception as exc:  # noqa: BLE001 - a crash or a dead worker: retry, then report
                        broken |= isinstance(exc, BrokenProcessPool)
                        if n <= self.retries:
                            queue.appendleft((pos, spec))
                            continue
                        out = failed(spec, f"failed after {n} attempts: {_error_text(exc)}", attempts=n)
                    out.attempts = n
                    yield pos, out
                if broken:
                    self._reset()
        finally:
            if pending:  # the caller stopped early (an error, Ctrl-C): drop what is queued
                for fut in pending:
                    fut.cancel()

    def close(self) -> None:
        if self._ex is not None:
            self._ex.shutdown(wait=True, cancel_futures=True)
            self._ex = None


def import_ray():
    """``import ray`` with a clear message when it is missing."""
    try:
        import ray  # NOTE: optional (the ray extra), so imported only when asked for
    except ImportError:
        raise ConfigError(f"--ray needs the Ray package, which is not installed; {RAY_HINT}") from None
    return ray


class RayPool(Pool):
    """Ray tasks with ``max_retries`` (worker deaths) and ``retry_exceptions`` (crashes), streamed with ``ray.wait``.

    ``address``: ``"auto"`` (the cluster this machine belongs to, as ``ray
    start`` set up), ``"ray://host:10001"`` (Ray Client), any address
    ``ray.init`` takes, or ``"local"`` / None to start a local instance with
    ``num_cpus`` (default every core). If Ray is already initialised in this
    process (tests), that instance is used as it is. Every worker needs
    driftsim importable (installed on the cluster's nodes, or shipped with
    ``runtime_env``) and any trace file at the same absolute path.
    """

    name = "Ray"

    def __init__(
        self,
        address: str | None = "auto",
        *,
        retries: int = 2,
        num_cpus: int | None = None,
        max_in_flight: int | None = None,
        runtime_env: dict | None = None,
    ) -> None:
        ray = import_ray()
        self._ray = ray
        self._owns = False
        self.retries = retries
        if not ray.is_initialized():
            try:
                if address in (None, "", "local"):
                    ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=False,
                             logging_level="ERROR", runtime_env=runtime_env)
                else:
                    ray.init(address=address, log_to_driver=False, logging_level="ERROR", runtime_env=runtime_env)
            except ConnectionError as exc:
                raise ConfigError(f"--ray {address}: cannot connect to a Ray cluster there ({exc})") from None
            self._owns = True
        self.address = address
        self.workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self.max_in_flight = max_in_flight or 4 * self.workers
        self._task = ray.remote(num_cpus=1, max_retries=retries, retry_exceptions=True)(execute)

    def _imap(self, specs):
        ray = self._ray
        queue = deque(enumerate(specs))
        refs: dict = {}
        try:
            while queue or refs:
                while queue and len(refs) < self.max_in_flight:
                    pos, spec = queue.popleft()
                    refs[self._task.remote(spec)] = (pos, spec)
                keys = list(refs)
                ready, rest = ray.wait(keys, num_returns=1)
                if rest:
                    more, _ = ray.wait(rest, num_returns=len(rest), timeout=0)
                    ready += more
                for ref in ready:
                    pos, spec = refs.pop(ref)
                    try:
                        out = ray.get(ref)
                        out.attempts = None  # Ray retried it as needed; it does not tell how often
                    except Exception as exc:  # noqa: BLE001 - failed after Ray's retries: report it
                        out = failed(spec, f"failed after {self.retries + 1} attempts: {_error_text(exc)}", attempts=self.retries + 1)
                    yield pos, out
        finally:
            for ref in refs:
                try:
                    ray.cancel(ref)
                except Exception:  # noqa: BLE001 - best effort on the way out
                    pass

    def close(self) -> None:
        if self._owns and self._ray.is_initialized():
            self._ray.shutdown()
        self._owns = False

    def describe(self) -> str:
        where = "local instance" if self.address in (None, "", "local") else self.address
        return f"Ray at {where} ({self.workers} CPUs)"


def make_pool(*, jobs: int | None = None, ray: str | None = None, retries: int = 2) -> Pool:
    """The executor the CLI flags ask for: ``--ray ADDRESS`` wins, ``--jobs 1`` is serial, else every local core."""
    if ray:
        return RayPool(ray, retries=retries)
    if jobs == 1:
        return SerialPool(retries=retries)
    return LocalPool(jobs, retries=retries)

"""Running a sweep plan on a driver within a time budget, writing every
measurement to disk as it comes.

A driver is anything with ``limits()``, ``metadata()`` and
``run_point(point, warmup=..., on_row=...)`` (and optionally
``supports(point)``, to skip points it cannot attribute) (:class:`driftsim.profiling.offline.OfflineDriver`,
:class:`driftsim.profiling.http.HttpDriver`). This module owns the loop, the budget
and the file, so both drivers stop, flush and report the same way.

Budget: the plan's estimates come from a rough prior; after every point the
loop rescales them by (measured / estimated) so far, skips a point that
would overrun what is left and goes on with cheaper ones. Warm-up counts
against the budget.
"""

from __future__ import annotations

import datetime as _dt
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from driftsim.profiling.measurements import MeasurementWriter
from driftsim.profiling.plan import CPU_PRIOR, GPU_PRIOR, EngineLimits, ProbePoint, SweepPlan, build_plan

DEFAULT_BUDGET_S = 300.0


class Driver(Protocol):
    source: str

    def limits(self) -> EngineLimits: ...

    def metadata(self) -> dict: ...

    def run_point(self, point: ProbePoint, *, warmup: bool = False,
                  on_row: Callable[[dict], None] | None = None) -> list[dict]: ...


@dataclass
class SweepResult:
    """What a sweep did: the file, how far it got and why it stopped."""

    path: Path
    status: str  # complete | interrupted | failed
    rows: int
    points_run: int
    points_planned: int
    wall_s: float  # measuring time, warm-up included, s
    phase_counts: dict = field(default_factory=dict)
    error: str | None = None


def warmup_points(limits: EngineLimits) -> list[ProbePoint]:
    """A few small points so first-call costs (allocations, kernel selection)
    land in rows marked ``warmup`` rather than in the fit."""
    T, M = limits.max_num_batched_tokens, limits.max_model_len
    long_prompt = max(16, min(T, M - 1, 1024))
    return [
        ProbePoint(kind="decode", batch=4, prompt_len=64, decode_steps=6, point_id=-1),
        ProbePoint(kind="prefill", batch=1, prompt_len=long_prompt, point_id=-2),
        ProbePoint(kind="decode", batch=min(16, limits.max_num_seqs), prompt_len=32, decode_steps=6, point_id=-3),
        ProbePoint(kind="decode", batch=1, prompt_len=16, decode_steps=6, point_id=-4),
    ]


def default_prior(device: str) -> dict:
    return dict(CPU_PRIOR if device == "cpu" else GPU_PRIOR)


def run_sweep(driver: Driver, *, out: str | Path, budget_s: float = DEFAULT_BUDGET_S, seed: int = 0,
              plan: SweepPlan | None = None, extra_meta: dict | None = None, warmup: bool = True,
              progress: Callable[[int, int, float, ProbePoint], None] | None = None) -> SweepResult:
    """Measure ``driver`` for at most ``budget_s`` seconds into ``out``.

    Never raises for an engine failure or Ctrl-C mid-sweep: the file is
    closed with status ``failed`` / ``interrupted`` and the error, and the
    result says so (the caller decides the exit code). Raises only if the
    file cannot be written at all.
    """
    limits = driver.limits()
    meta = driver.metadata()
    if plan is None:
        plan = build_plan(limits, budget_s=budget_s, prior=default_prior(meta.get("device", "cpu")), seed=seed)
    meta.update(extra_meta or {})
    meta.update(date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), plan=plan.describe(),
                seed=seed)
    writer = MeasurementWriter(out, meta)
    t_start = time.perf_counter()
    ratio_num = ratio_den = 0.0
    points_run = 0
    status, error = "complete", None
    try:
        if warmup:
            for p in warmup_points(limits):
                driver.run_point(p, warmup=True, on_row=writer.add)
        for i, point in enumerate(plan.points):
            elapsed = time.perf_counter() - t_start
            left = budget_s - elapsed
            if left <= 0.01 * budget_s:
                break
            if not getattr(driver, "supports", lambda p: True)(point):
                continue  # e.g. a chunked prefill over HTTP: nothing it could attribute
            scale = min(20.0, max(0.2, ratio_num / ratio_den)) if ratio_den > 0 else 1.0
            if point.est_s * scale > left:
                continue
            if progress is not None:
                progress(i, len(plan.points), elapsed, point)
            t = time.perf_counter()
            driver.run_point(point, on_row=writer.add)
            ratio_num += time.perf_counter() - t
            ratio_den += point.est_s
            points_run += 1
            writer.flush()
    except KeyboardInterrupt:
        status, error = "interrupted", "interrupted by the user (Ctrl-C)"
    except Exception as exc:  # engine or server failure: keep what was measured
        status, error = "failed", f"{exc.__class__.__name__}: {exc}"
    wall = time.perf_counter() - t_start
    writer.update_meta(wall_s=round(wall, 2), points_run=points_run, points_planned=len(plan.points),
                       budget_s=budget_s)
    writer.close(status, error)
    frame = writer.frame
    counts: dict[str, Any] = {}
    if frame.height:
        fitted = frame.filter(~frame["warmup"])
        counts = dict(zip(*fitted["phase"].value_counts(sort=True).to_dict(as_series=False).values()))
    return SweepResult(path=Path(out), status=status, rows=len(writer.rows), points_run=points_run,
                       points_planned=len(plan.points), wall_s=wall, phase_counts=counts, error=error)

"""Run a scenario into a results folder: the one call behind ``driftsim simulate``.

The folder gets ``requests.parquet`` (one row per request; none when only
the summary is kept) and ``summary.json`` (the summary and the run's
context: profile, engine, gateway, trace repairs).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterable
from typing import Any, Callable

from driftsim.errors import ConfigError
from driftsim.sim.atomic import atomic_write_parquet, atomic_write_text
from driftsim.sim.events import Observer
from driftsim.sim.run import SimResult
from driftsim.sim.scenario import Scenario, run_scenario
from driftsim.sim.scenario_stream import run_scenario_streamed

#: How per-request results are kept: "memory" (in memory, written at the end), "stream" (written as requests
#: settle; memory stays flat) or "summary" (no per-request rows; percentiles from a streaming sketch).
RESULT_MODES: tuple[str, ...] = ("memory", "stream", "summary")


@dataclass(frozen=True)
class FolderRun:
    """How a scenario run keeps its results, and where."""

    folder: Path
    results: str = "memory"
    oracle_regret: bool = False  # also simulate with real output lengths as estimates (needs results in memory)

    def __post_init__(self) -> None:
        if self.results not in RESULT_MODES:
            raise ConfigError(f"results: expected one of {', '.join(RESULT_MODES)}, got {self.results!r}")
        if self.oracle_regret and self.results != "memory":
            raise ConfigError("oracle_regret needs the trace and results in memory (results='memory')")


@dataclass(frozen=True)
class FolderRunResult:
    """A finished run: its result and context, the folder written, and the simulation's wall time (s)."""

    result: SimResult
    context: dict
    folder: Path
    wall_s: float


def run_scenario_to_folder(scenario: Scenario, *, run: FolderRun, progress: Callable[[float], None] | None = None,
                           observers: Iterable[Observer] | None = None) -> FolderRunResult:  # fmt: skip
    """Simulate ``scenario`` keeping results as ``run`` says, then write the folder; ``progress`` gets the share of
    arrivals done, ``observers`` the run's events (:mod:`driftsim.sim.events`)."""
    t0 = time.perf_counter()
    if run.results == "memory":
        result, context = run_scenario(scenario, progress=progress, oracle_regret=run.oracle_regret,
                                       observers=observers)  # fmt: skip
    else:
        result, context = run_scenario_streamed(
            scenario, results_path=None if run.results == "summary" else run.folder / "requests.parquet",
            summary_only=run.results == "summary", progress=progress, observers=observers,
        )  # fmt: skip
    wall_s = time.perf_counter() - t0
    save_run(run.folder, result, context)
    return FolderRunResult(result=result, context=context, folder=run.folder, wall_s=wall_s)


def save_run(folder: Path, result: SimResult, context: dict) -> None:
    """Write ``requests.parquet`` (when the result holds the rows) and ``summary.json`` into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    if result.requests is not None:
        atomic_write_parquet(folder / "requests.parquet", result.requests)
    atomic_write_text(folder / "summary.json", json.dumps({"summary": result.summary, "context": context}, indent=2,
                                                          default=json_default, allow_nan=True))


def json_default(o: Any) -> Any:
    """JSON for what ``json`` cannot write itself: numpy scalars as Python numbers, anything else as text."""
    if hasattr(o, "item"):
        return o.item()
    return str(o)

"""A sweep: every run of a grid on a pool, gathered into one :class:`~driftsim.capacity.results.ResultSet`.

The call behind ``driftsim sweep``: :meth:`Sweep.build` expands the study
into run specs and checks them before anything runs; :func:`run_sweep`
runs them on a pool and records what was run (axes, seeds, targets,
executor, wall time) in the result's ``meta``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import Callable

from driftsim.capacity.journal import SweepJournal
from driftsim.capacity.pool import Pool
from driftsim.capacity.results import ResultSet
from driftsim.capacity.runner import RunOutcome
from driftsim.capacity.spec import Grid, RunSpec, check_specs, expand
from driftsim.capacity.study import StudyInputs
from driftsim.errors import ConfigError
from driftsim.sim.scenario import Scenario, build_engine, build_gateway, build_profile, place_policy


@dataclass(frozen=True)
class Sweep:
    """A grid over a study's scenario, its run specs (checked) and the prices for cost columns ($/GPU-hour by profile)."""

    inputs: StudyInputs
    grid: Grid
    specs: tuple[RunSpec, ...]
    prices: dict

    @classmethod
    def build(cls, inputs: StudyInputs, *, axes: dict, prices: dict, record_first_seed: bool = True) -> Sweep:
        """Expand ``axes`` x seeds over the study; raises ConfigError (or ProfileError) before any run on a bad configuration."""
        grid = Grid(scenario=inputs.scenario, axes=axes, seeds=inputs.seeds, fixed=inputs.fixed)
        specs = expand(grid, targets=tuple(inputs.targets), record_first_seed=record_first_seed)
        check_specs(specs)
        check_placement(specs)
        return cls(inputs=inputs, grid=grid, specs=tuple(specs), prices=prices)

    @property
    def configurations(self) -> int:
        return len(self.specs) // len(self.inputs.seeds)


def check_placement(specs: list[RunSpec]) -> None:
    """Fail before any run where a policy could not act (:func:`driftsim.sim.scenario.place_policy`), naming the run."""
    seen: set[str] = set()
    for spec in specs:
        if spec.config in seen:
            continue
        seen.add(spec.config)
        sc = Scenario(name=str(spec.scenario.get("name", "sweep")), raw=spec.scenario)
        try:
            place_policy(build_gateway(sc), build_engine(sc, build_profile(sc)), "placement" in spec.scenario.get("gateway", {}))
        except ConfigError as exc:
            raise ConfigError(f"run {spec.config!r}: {exc}") from None


def run_sweep(sweep: Sweep, pool: Pool, *, on_result: Callable[[RunOutcome], None] | None = None,
              journal: SweepJournal | None = None) -> ResultSet:  # fmt: skip
    """Start ``pool``, run every spec on it (``on_result`` is called as each finishes), stop it, gather the outcomes.

    With a ``journal`` each outcome is kept on disk as it arrives, and the
    specs it already holds (a resumed sweep) are not run again.
    """
    t0 = time.perf_counter()
    done = journal.outcomes() if journal is not None else {}
    pending = [s for s in sweep.specs if s.index not in done]

    def keep(outcome: RunOutcome) -> None:
        if journal is not None:
            journal.record(outcome)
        if on_result is not None:
            on_result(outcome)

    with pool:
        outcomes = [*done.values(), *pool.run(pending, on_result=keep)] if pending else list(done.values())
    wall = time.perf_counter() - t0
    inputs = sweep.inputs
    meta = {
        "command": "sweep", "scenario": inputs.scenario, "scenario_name": sweep.specs[0].scenario.get("name", ""),
        "axes": sweep.grid.axes, "seeds": inputs.seeds, "fixed": inputs.fixed, "targets": [t.__dict__ for t in inputs.targets],
        "executor": pool.describe(), "wall_s": wall, "runs": len(sweep.specs), "created": datetime.now().isoformat(timespec="seconds"),
    }  # fmt: skip
    return ResultSet.from_outcomes(outcomes, meta=meta, prices=sweep.prices)

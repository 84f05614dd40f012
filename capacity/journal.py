"""A sweep's journal: each finished run on disk as it ends, so an interrupted sweep loses nothing.

``<folder>/journal/sweep.pkl`` holds the sweep (its specs, study and
prices) written before the first run; ``journal/run-<index>.pkl`` holds one
run's outcome, written atomically the moment the run reports. ``driftsim
sweep --resume <folder>`` reads both, runs only the specs with no outcome
and gathers every outcome into the same tables an uninterrupted sweep writes.

NOTE: pickle keeps every value exactly (floats, tuples, NaN), which is what
makes a resumed sweep's tables equal an uninterrupted one's bit for bit. A
journal is read only from a folder the user names, as their own files.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from driftsim.capacity.runner import RunOutcome
from driftsim.errors import ConfigError
from driftsim.sim.atomic import atomic_write


class SweepJournal:
    """The journal folder of one sweep's results folder."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / "journal"

    def start(self, sweep: Any) -> None:
        """Record the sweep before any run, so that ``--resume`` can rebuild it."""
        _write_pickle(self.path / "sweep.pkl", sweep)

    def record(self, outcome: RunOutcome) -> None:
        """Keep one finished run (atomic: a run killed while writing leaves no half file)."""
        _write_pickle(self.path / f"run-{outcome.index:06d}.pkl", outcome)

    def sweep(self) -> Any:
        """The sweep recorded by :meth:`start`; ConfigError naming the folder when there is none."""
        path = self.path / "sweep.pkl"
        if not path.is_file():
            raise ConfigError(f"--resume {self.folder}: no journal/sweep.pkl here; is it a folder `driftsim sweep` wrote?")
        with path.open("rb") as f:
            return pickle.load(f)

    def outcomes(self) -> dict[int, RunOutcome]:
        """The runs already finished, by spec index."""
        done: dict[int, RunOutcome] = {}
        for path in sorted(self.path.glob("run-*.pkl")):
            with path.open("rb") as f:
                outcome = pickle.load(f)
            done[outcome.index] = outcome
        return done


def _write_pickle(path: Path, obj: Any) -> None:
    def write(tmp: Path) -> None:
        with tmp.open("wb") as f:
            pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)

    atomic_write(path, write)

"""Engine state over time (batch size, engine queue, KV use), recorded from the engine's own samples.

An :class:`EngineSampler` is an observer for ``simulate(..., observers=[sampler])``:
it keeps each :class:`~driftsim.sim.events.EngineSampled` the engines
publish after a commit, at most one per ``every_s`` per replica, so a
long run's series stays small. :meth:`EngineSampler.frame` gives the table a
run folder stores as ``engine_samples.parquet`` and the run report plots.
"""

from __future__ import annotations

import math
import os

import polars as pl

from driftsim.sim.events import EngineSampled, Event

__all__ = ["ENGINE_SAMPLES_FILE", "EngineSampler"]

#: File name of the samples in a run folder.
ENGINE_SAMPLES_FILE = "engine_samples.parquet"

_SCHEMA = {
    "replica": pl.Int32,
    "t_s": pl.Float64,  # end of the committed step, s
    "running": pl.Int32,  # requests in the batch
    "waiting": pl.Int32,  # requests queued at the engine
    "kv_used_blocks": pl.Int64,
    "kv_total_blocks": pl.Int64,
}


class EngineSampler:
    """Keeps the engines' state samples; ``every_s`` > 0 thins them to one per interval per replica."""

    def __init__(self, every_s: float = 0.0) -> None:
        if not (every_s >= 0) or not math.isfinite(every_s):
            raise ValueError(f"every_s: expected a finite number >= 0, got {every_s!r}")
        self.every_s = every_s
        self._rows: list[tuple] = []
        self._last: dict[int, float] = {}

    def __call__(self, event: Event) -> None:
        if not isinstance(event, EngineSampled):
            return
        last = self._last.get(event.replica)
        if last is not None and event.t_s - last < self.every_s:
            return
        self._last[event.replica] = event.t_s
        self._rows.append((event.replica, event.t_s, event.running, event.waiting, event.kv_used_blocks,
                           event.kv_total_blocks))  # fmt: skip

    def frame(self) -> pl.DataFrame:
        """The samples, by replica then time, with ``kv_used_fraction``."""
        df = pl.DataFrame(self._rows, schema=_SCHEMA, orient="row")
        return df.sort("replica", "t_s", maintain_order=True).with_columns(
            (pl.col("kv_used_blocks") / pl.col("kv_total_blocks")).alias("kv_used_fraction")
        )

    def write(self, folder: str | os.PathLike) -> str:
        """Store the samples as ``engine_samples.parquet`` in a run folder; return the path."""
        path = os.path.join(folder, ENGINE_SAMPLES_FILE)
        self.frame().write_parquet(path)
        return path

"""A validation session's saved files, and the result a session produces.

A validation run with an output folder keeps, under ``OUTDIR/replays/``:

- ``levels.json`` and ``level-<i>.parquet``: the traces of every load level
  (written before the first replay);
- ``state.json``: the format version, the server's facts, the client
  overhead, the calibration and the run's configuration (written once
  calibration is done);
- ``level-<i>-rep-<r>.jsonl``: the journal of each replay
  (:class:`driftsim.profiling.journal.ReplayJournal`, a line per finished request);
- ``level-<i>-rep-<r>.json``: each finished replay's wall time, CPU
  contention and engine counters.

Every file but the journals is written atomically. A session is resumed
(:func:`driftsim.validation.run.run_validation`) or re-scored without a server
(:func:`driftsim.validation.rescore.rescore`) only in the format this version
writes (:data:`FORMAT_VERSION`); an earlier one is refused with a message
naming its folder.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import polars as pl

from driftsim import __version__
from driftsim.profiling.journal import JournalError, atomic_write_json, atomic_write_parquet, trace_key
from driftsim.profiling.server_facts import ServerFacts
from driftsim.validation.levels import LevelResult

STATE = "state.json"
LEVELS = "levels.json"
#: The format of the saved session files. Sessions saved before it (no ``format_version`` in
#: ``state.json``) corrected the profile with a step offset, floor and per-sequence cost that this
#: version no longer models.
FORMAT_VERSION = 1
#: The step correction earlier formats saved in ``state.json``.
LEGACY_STEP_FIELDS = ("step_offset_s", "step_floor_s", "step_per_seq_s")


def replays_dir(out: str | Path) -> Path:
    """Where a validation written to ``out`` keeps its session files."""
    return Path(out) / "replays"


def journal_path(folder: Path, level: int, rep: int) -> Path:
    """The journal of replay ``rep`` of level ``level``."""
    return folder / f"level-{level}-rep-{rep}.jsonl"


# ---- level traces and state ---------------------------------------------------------------

def save_levels(folder: Path, traces: list[tuple[float | None, pl.DataFrame]]) -> None:
    for i, (_, df) in enumerate(traces):
        atomic_write_parquet(folder / f"level-{i}.parquet", df)
    atomic_write_json(folder / LEVELS, {"levels": [{"load": load, "file": f"level-{i}.parquet",
                                                   "trace": trace_key(df["request_id"]), "requests": df.height}
                                                  for i, (load, df) in enumerate(traces)]})


def load_levels(folder: Path) -> list[tuple[float | None, pl.DataFrame]]:
    path = folder / LEVELS
    try:
        meta = json.loads(path.read_text())
        out = []
        for lv in meta["levels"]:
            df = pl.read_parquet(folder / lv["file"])
            if trace_key(df["request_id"]) != lv["trace"]:
                raise JournalError(f"{folder / lv['file']}: does not match {path} (changed since it was saved)")
            out.append((lv["load"], df))
        return out
    except FileNotFoundError as exc:
        raise JournalError(f"{folder}: no saved validation here ({exc.filename} is missing)") from None
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise JournalError(f"{path}: not a driftsim levels file ({exc})") from None


def save_state(folder: Path, **state) -> None:
    """The session's state, stamped with :data:`FORMAT_VERSION` and the driftsim version writing it."""
    atomic_write_json(folder / STATE, _clean({"format_version": FORMAT_VERSION, "driftsim_version": __version__,
                                              **state}))


def load_state(folder: Path) -> dict | None:
    """The saved state (None where calibration never finished); refuses one of an earlier format."""
    path = folder / STATE
    if not path.exists():
        return None
    try:
        state = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise JournalError(f"{path}: not valid JSON ({exc})") from None
    check_format(folder, state)
    return state


def check_format(folder: Path, state: dict) -> None:
    """Refuse a session saved in another format than :data:`FORMAT_VERSION` (:class:`JournalError`,
    naming the folder and, where the state says, the driftsim version that wrote it)."""
    version = state.get("format_version")
    if version == FORMAT_VERSION:
        return
    writer = state.get("driftsim_version")
    by = f" (written by driftsim {writer})" if writer else ""
    if version is None or any(state.get(k) for k in LEGACY_STEP_FIELDS):
        raise JournalError(f"{folder}: this saved validation predates the current format (version "
                           f"{FORMAT_VERSION}){by}; driftsim {__version__} cannot re-score or resume it: "
                           "run the validation again")
    raise JournalError(f"{folder}: saved in format version {version}{by}; driftsim {__version__} reads "
                       f"version {FORMAT_VERSION}")


def save_replay_meta(folder: Path, level: int, rep: int, meta: dict) -> None:
    atomic_write_json(folder / f"level-{level}-rep-{rep}.json", _clean(meta))


def load_replay_meta(folder: Path, level: int, rep: int) -> dict:
    path = folder / f"level-{level}-rep-{rep}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _clean(obj):
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        return obj.item()
    return obj


# ---- the result ------------------------------------------------------------------------------

@dataclass
class ValidationResult:
    """A validation's outcome, live or re-scored: every level, the server, the calibration, notes."""

    levels: list[LevelResult]
    facts: ServerFacts
    overhead_s: float
    overhead_samples: list[tuple[int, float]]  # (prompt tokens, TTFT s) of the 1-token probes
    capacity_rps: float | None
    config: dict
    notes: list[str] = field(default_factory=list)
    interrupted: bool = False
    pooled: LevelResult | None = None  # every level together, scored per repeat (a sweep's "all levels")
    calibration: dict | None = None  # the held-out calibration replay: its size and the fit (fitted_calibration)
    calibration_frame: pl.DataFrame | None = None  # the calibration replay's per-request frame

    def to_dict(self) -> dict:
        """Everything but the per-request frames, JSON-ready."""
        return {
            "config": self.config, "server": asdict(self.facts), "overhead_s": self.overhead_s,
            "calibration": self.calibration,
            "overhead_samples_s": self.overhead_samples, "capacity_rps": self.capacity_rps,
            "notes": self.notes, "interrupted": self.interrupted,
            "levels": [{"load": lv.load, "rate_rps": lv.rate_rps, "requests": lv.trace.height,
                        "repeats": len(lv.real), "wall_s": lv.wall_s, "interrupted": lv.interrupted,
                        "contention": lv.contention, "engine": lv.engine, "server_speed": lv.speed,
                        "aggregate": lv.aggregate, "runs": lv.scores,
                        **{name: v.to_dict() for name, v in lv.variants.items()}}
                       for lv in self.levels],
            "all_levels": None if self.pooled is None else {
                "aggregate": self.pooled.aggregate, "runs": self.pooled.scores,
                **{name: v.to_dict() for name, v in self.pooled.variants.items()}},
        }

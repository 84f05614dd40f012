"""The measurement table: one row per observed engine step, plus the facts
about the engine that produced it.

Every driver (in-process vLLM, HTTP) writes this table and the fitter only
reads it, so the two meet at a file that can be inspected with polars and
kept beside the profile it produced.

Storage. Parquet, with the metadata as JSON under the schema-metadata key
``driftsim.measurements``; or CSV with the metadata in a sidecar
``<file>.meta.json``. :class:`MeasurementWriter` rewrites the whole file
atomically (temporary file, then ``os.replace``) every few steps: a profile
is a few thousand rows, so a rewrite costs milliseconds, and the file on
disk is always complete and readable, whatever stops the run (Ctrl-C, a
crashed server, a killed process). The metadata's ``status`` says whether
the sweep finished (``complete``) or not (``running``, ``interrupted``,
``failed``) and why.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

META_KEY = b"driftsim.measurements"
FORMAT = "driftsim-measurements"
FORMAT_VERSION = 1
PHASES = ("prefill", "decode", "mixed")
FEATURES = ("prefill_tokens", "prefill_attn_tokens", "prefill_seqs", "decode_seqs", "decode_ctx_tokens")

#: column -> polars dtype. Units in the comments.
SCHEMA: dict[str, pl.DataType] = {
    "source": pl.String,  # driver that observed the step: "offline" (engine step) or "http" (token stream)
    "point_id": pl.Int64,  # planned sweep point the step belongs to (steps of one point are correlated)
    "point_kind": pl.String,  # kind of the planned point: prefill | decode | mixed | warmup
    "rep": pl.Int64,  # repetition of the point (0 = first pass over the plan)
    "step": pl.Int64,  # index of the step within its point
    "phase": pl.String,  # what the step ran: prefill (prompt chunks only) | decode (decodes only) | mixed
    "step_time_s": pl.Float64,  # wall time of the engine iteration, s (> 0)
    "prefill_tokens": pl.Int64,  # prompt tokens computed this step, tokens
    "prefill_seqs": pl.Int64,  # sequences that ran a prompt chunk this step
    "prefill_attn_tokens": pl.Float64,  # sum over prompt tokens of the context each attends to, token-pairs
    "decode_seqs": pl.Int64,  # sequences that generated one token this step
    "decode_ctx_tokens": pl.Int64,  # sum of their context lengths incl. the new token, tokens
    "num_tokens": pl.Int64,  # tokens the engine reports it scheduled this step (raw; = prefill_tokens + decode_seqs)
    "num_reqs": pl.Int64,  # requests the engine reports it scheduled this step (raw)
    "raw": pl.String,  # raw record (JSON): offline [[prompt, computed, scheduled, outputs], ...]; http probe facts
    "warmup": pl.Boolean,  # taken while warming the engine up; never fitted
    "new_shape": pl.Boolean,  # first step with this token count since the engine started (cold kernels)
    "t_s": pl.Float64,  # start of the step, s since the sweep started
    "own_cpu_s": pl.Float64,  # CPU time this process used during the step, s (NaN if unknown)
    "host_cpu_s": pl.Float64,  # CPU time the whole host used during the step, s (jiffy resolution; NaN if unknown)
    "wait_s": pl.Float64,  # time this process's threads were runnable but not running during the step, s (NaN if unknown)
}
REQUIRED = ("phase", "step_time_s", *FEATURES)


class MeasurementError(ValueError):
    """A measurement file is missing, empty, malformed or unusable; the
    message names the file and what is wrong."""


@dataclass(frozen=True)
class Measurements:
    """A loaded measurement table and its metadata."""

    df: pl.DataFrame
    meta: dict
    path: Path | None = None

    def usable(self) -> pl.DataFrame:
        """Rows a fit may use: not warm-up, positive finite time, a known phase."""
        return self.df.filter(
            ~pl.col("warmup") & pl.col("phase").is_in(PHASES)
            & pl.col("step_time_s").is_finite() & (pl.col("step_time_s") > 0)
        )


def empty_row() -> dict:
    """A row with every column present (NaN/empty defaults) for drivers to fill."""
    return {"source": "", "point_id": -1, "point_kind": "", "rep": 0, "step": 0, "phase": "",
            "step_time_s": math.nan, "prefill_tokens": 0, "prefill_seqs": 0, "prefill_attn_tokens": 0.0,
            "decode_seqs": 0, "decode_ctx_tokens": 0, "num_tokens": 0, "num_reqs": 0, "raw": "",
            "warmup": False, "new_shape": False, "t_s": math.nan, "own_cpu_s": math.nan, "host_cpu_s": math.nan, "wait_s": math.nan}


def phase_of(prefill_tokens: int, decode_seqs: int) -> str:
    """prefill | decode | mixed | idle, from what a step computed."""
    if prefill_tokens > 0:
        return "mixed" if decode_seqs > 0 else "prefill"
    return "decode" if decode_seqs > 0 else "idle"


def to_frame(rows: list[dict]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=SCHEMA, orient="row") if rows else pl.DataFrame(schema=SCHEMA)


# ---- writing ---------------------------------------------------------------

def write_measurements(path: str | Path, df: pl.DataFrame, meta: dict) -> None:
    """Write ``df`` and ``meta`` to ``path`` (``.parquet`` or ``.csv``) atomically."""
    import pyarrow.parquet as pq  # here, not at the top: pyarrow takes 0.5 s to import, and a CSV never needs it

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, **meta}
    text = json.dumps(meta, sort_keys=True, default=str)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    if path.suffix.lower() == ".csv":
        df.write_csv(tmp)
        side, side_tmp = _sidecar(path), tmp.with_name(tmp.name + ".meta")
        side_tmp.write_text(text)
        os.replace(side_tmp, side)
        os.replace(tmp, path)
        return
    table = df.to_arrow()
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), META_KEY: text.encode()})
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".meta.json")


class MeasurementWriter:
    """Collects rows and keeps ``path`` up to date while a sweep runs.

    ``add`` appends a row; every ``flush_every`` rows, or ``flush_every_s``
    seconds, the file is rewritten (atomically) so an interruption loses at
    most the rows since the last flush. ``close(status)`` writes the final
    file with the status (``complete`` | ``interrupted`` | ``failed``).
    """

    def __init__(self, path: str | Path, meta: dict, *, flush_every: int = 25, flush_every_s: float = 10.0):
        path = Path(path)
        if path.suffix.lower() not in (".parquet", ".csv"):
            raise MeasurementError(f"{path}: measurement file must end in .parquet or .csv")
        self.path = path
        self.meta = dict(meta)
        self.meta.setdefault("status", "running")
        self.rows: list[dict] = []
        self.flush_every = flush_every
        self.flush_every_s = flush_every_s
        self._since_flush = 0
        self._last_flush = time.monotonic()
        self.flush()

    def add(self, row: dict) -> None:
        self.rows.append(row)
        self._since_flush += 1
        if self._since_flush >= self.flush_every or time.monotonic() - self._last_flush >= self.flush_every_s:
            self.flush()

    def update_meta(self, **values: Any) -> None:
        self.meta.update(values)

    def flush(self) -> None:
        self.meta["rows"] = len(self.rows)
        write_measurements(self.path, to_frame(self.rows), self.meta)
        self._since_flush = 0
        self._last_flush = time.monotonic()

    def close(self, status: str, error: str | None = None) -> None:
        self.meta["status"] = status
        if error:
            self.meta["error"] = error
        self.flush()

    @property
    def frame(self) -> pl.DataFrame:
        return to_frame(self.rows)


# ---- reading ---------------------------------------------------------------

def load_measurements(path: str | Path) -> Measurements:
    """Read a measurement file written by :func:`write_measurements`.

    Raises :class:`MeasurementError` naming the file when it is missing,
    empty, not Parquet/CSV, lacks required columns, has no rows, or holds a
    step time that is not a positive finite number (the row is named).
    """
    path = Path(path)
    if not path.exists():
        raise MeasurementError(f"{path}: measurement file not found")
    if path.is_dir():
        raise MeasurementError(f"{path}: is a folder, expected a measurement file (.parquet or .csv)")
    if path.stat().st_size == 0:
        raise MeasurementError(f"{path}: file is empty (0 bytes); was the profile run interrupted before its first write?")
    meta: dict = {}
    if path.suffix.lower() == ".csv":
        try:
            df = pl.read_csv(path, schema_overrides={k: v for k, v in SCHEMA.items() if k != "warmup" and k != "new_shape"})
        except Exception as exc:  # polars raises several types for bad CSV
            raise MeasurementError(f"{path}: not a readable CSV measurement file: {exc}") from None
        side = _sidecar(path)
        if side.is_file():
            try:
                meta = json.loads(side.read_text())
            except json.JSONDecodeError as exc:
                raise MeasurementError(f"{side}: metadata is not valid JSON: {exc}") from None
    else:
        import pyarrow.parquet as pq  # only a Parquet file needs pyarrow (0.5 s to import)

        try:
            table = pq.read_table(path)
        except Exception as exc:
            raise MeasurementError(
                f"{path}: not a readable Parquet file ({exc.__class__.__name__}: {exc}); "
                "measurement files are .parquet (or .csv with a .meta.json sidecar)"
            ) from None
        raw_meta = (table.schema.metadata or {}).get(META_KEY)
        if raw_meta is not None:
            try:
                meta = json.loads(raw_meta)
            except json.JSONDecodeError as exc:
                raise MeasurementError(f"{path}: metadata is not valid JSON: {exc}") from None
        df = pl.from_arrow(table)
        assert isinstance(df, pl.DataFrame)
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise MeasurementError(
            f"{path}: not a driftsim measurement table: missing column(s) {', '.join(missing)} "
            f"(has {', '.join(df.columns) or 'no columns'})"
        )
    for col, dtype in SCHEMA.items():
        if col not in df.columns:
            default = empty_row()[col]
            df = df.with_columns(pl.lit(default, dtype=dtype).alias(col))
    try:
        df = df.select([pl.col(c).cast(t) for c, t in SCHEMA.items()])
    except Exception as exc:
        raise MeasurementError(f"{path}: a column has the wrong type: {exc}") from None
    if df.height == 0:
        status = meta.get("status")
        hint = f" (run status: {status}{': ' + meta['error'] if meta.get('error') else ''})" if status else ""
        raise MeasurementError(f"{path}: holds no measurements{hint}")
    bad = df.with_row_index("row").filter(
        ~pl.col("warmup") & (pl.col("step_time_s").is_null() | ~pl.col("step_time_s").is_finite()
                             | (pl.col("step_time_s") <= 0))
    )
    if bad.height:
        r = bad.row(0, named=True)
        raise MeasurementError(f"{path}: row {r['row']}: step_time_s must be a positive finite number, got {r['step_time_s']!r}")
    neg = df.with_row_index("row").filter(pl.any_horizontal([pl.col(c) < 0 for c in FEATURES]))
    if neg.height:
        r = neg.row(0, named=True)
        col = next(c for c in FEATURES if r[c] < 0)
        raise MeasurementError(f"{path}: row {r['row']}: {col} must be >= 0, got {r[col]!r}")
    return Measurements(df=df, meta=meta, path=path)


# ---- host facts ------------------------------------------------------------

class CpuMeter:
    """Per-step CPU accounting, to tell engine time from interference.

    - ``own``: CPU time of this process (``time.process_time``, precise);
    - ``host``: CPU time of the whole host (``/proc/stat``, 10 ms jiffies);
    - ``wait``: time the calling thread spent runnable but not running
      (run-queue delay from ``/proc/thread-self/schedstat``, nanoseconds).

    ``wait`` is the one that matters: on a small CPU machine another process
    taking the engine's core is the main source of timing noise, and a step
    with a run-queue delay is a measurement of the neighbours, not of the
    engine. The fitter leaves such steps out (see ``driftsim.costmodel.fit``). It is
    exact when the engine computes on the thread that calls ``step()`` (one
    OpenMP thread, the CPU default here) and a lower bound otherwise (OpenMP
    workers' delays are not seen).
    """

    def __init__(self) -> None:
        self._hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._stat_ok = Path("/proc/stat").is_file()
        self._sched = "/proc/thread-self/schedstat"
        self._sched_ok = Path(self._sched).is_file()

    def read(self) -> tuple[float, float, float]:
        """(own CPU s, host CPU s, run-queue wait s) so far; NaN where unknown."""
        own = time.process_time()
        host = wait = math.nan
        if self._stat_ok:
            try:
                with open("/proc/stat", "rb") as f:
                    fields = f.readline().split()[1:]
                host = (sum(int(x) for x in fields) - int(fields[3]) - int(fields[4])) / self._hz  # minus idle, iowait
            except (OSError, ValueError, IndexError):
                pass
        if self._sched_ok:
            try:
                with open(self._sched, "rb") as f:
                    wait = int(f.read().split()[1]) / 1e9
            except (OSError, ValueError, IndexError):
                pass
        return own, host, wait

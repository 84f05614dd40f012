"""Nothing measured is lost: atomic file writes and a per-request journal of every replay.

- :func:`atomic_write` (and the text/JSON/Parquet helpers): the file is
  written beside its destination under a temporary name, flushed to disk
  and renamed over it with ``os.replace``, so a reader (or a crash) sees
  the old file or the new one, never half of one.
- :class:`ReplayJournal`: one JSON line per request, appended and flushed
  the moment the request reaches a final outcome (``ok``, ``error``,
  ``timeout``, ``abandoned``, ``skipped``). A replay killed at any point
  leaves every finished request on disk; a line cut short by the kill is
  ignored on reading (:func:`read_journal` says how many). The first line
  is a header naming the trace it belongs to (its request ids), so a
  journal is never applied to another trace.

``driftsim validate --resume OUTDIR`` replays only what a journal lacks;
``driftsim validate --rescore OUTDIR`` rebuilds the report from the
journals without a server (:mod:`driftsim.validation.rescore`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Callable

from driftsim.profiling.gateway import RequestRecord
from driftsim.sim.atomic import _json_default, atomic_write, atomic_write_json, atomic_write_parquet, atomic_write_text  # noqa: F401

#: outcomes a resumed replay keeps (anything else, e.g. ``error`` or ``cancelled``, is replayed)
KEEP_ON_RESUME = ("ok", "timeout", "abandoned", "skipped")
#: outcomes written to the journal
JOURNALED = ("ok", "error", "timeout", "abandoned", "skipped")
_TIME_FIELDS = ("intended_s", "released_s", "sent_s", "first_token_s", "finish_s", "delivered_s", "settled_s")


class JournalError(ValueError):
    """A journal or saved state cannot be used; the message names the file and why."""


# ---- atomic writes (driftsim.sim.atomic; re-exported here for the replay's callers) ------------

def _finite(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return x


# ---- the journal --------------------------------------------------------------------

def trace_key(request_ids) -> str:
    """A short fingerprint of a trace's request ids, in order."""
    h = hashlib.sha256()
    for rid in request_ids:
        h.update(int(rid).to_bytes(8, "little", signed=True))
    return h.hexdigest()[:16]


class ReplayJournal:
    """Appends one line per finished request to ``path`` (see the module docstring).

    ``time_shift_s`` is added to every time of a record before it is written
    (a resumed replay runs on its own clock, started at its first request).
    """

    def __init__(self, path: str | Path, *, trace: str, requests: int, time_shift_s: float = 0.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.shift = time_shift_s
        fresh = not self.path.exists() or self.path.stat().st_size == 0
        self._f = open(self.path, "a", encoding="utf-8")
        if fresh:
            self._line({"journal": 1, "trace": trace, "requests": requests})
        self.written = 0

    def _line(self, obj: dict) -> None:
        self._f.write(json.dumps(obj, allow_nan=False, separators=(",", ":")) + "\n")
        self._f.flush()  # in the OS's hands now: survives this process being killed

    def record(self, rec) -> None:
        """Write one request's final record (a :class:`driftsim.profiling.gateway.RequestRecord`)."""
        if rec.status not in JOURNALED:
            return
        row = asdict(rec)
        if self.shift:
            for k in _TIME_FIELDS:
                row[k] = row[k] + self.shift
            row["token_times"] = [t + self.shift for t in row["token_times"]]
        self._line({k: _finite(v) for k, v in row.items()})
        self.written += 1

    def close(self) -> None:
        if not self._f.closed:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()

    def __enter__(self) -> "ReplayJournal":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def read_journal(path: str | Path, *, trace: str | None = None) -> tuple[dict[int, dict], int]:
    """``({idx: record fields}, lines dropped)`` from a journal; a later line for the same request
    replaces an earlier one (a request replayed again on resume). Raises :class:`JournalError`
    if the header is missing or names another trace than ``trace``."""
    path = Path(path)
    names = {f.name for f in fields(RequestRecord)}
    out: dict[int, dict] = {}
    dropped = 0
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise JournalError(f"{path}: empty journal (no header line)")
    try:
        header = json.loads(lines[0])
        assert isinstance(header, dict) and header.get("journal") == 1
    except (json.JSONDecodeError, AssertionError):
        raise JournalError(f"{path}: line 1 is not a driftsim journal header") from None
    if trace is not None and header.get("trace") != trace:
        raise JournalError(f"{path}: written for another trace (fingerprint {header.get('trace')}, expected {trace})")
    for line in lines[1:]:
        try:
            row = json.loads(line)
            assert isinstance(row, dict) and isinstance(row.get("idx"), int) and names >= set(row)
        except (json.JSONDecodeError, AssertionError):
            dropped += 1  # a line cut short when the process was killed
            continue
        out[row["idx"]] = row
    return out, dropped


def record_from_row(row: dict):
    """A :class:`driftsim.profiling.gateway.RequestRecord` from a journal line (None times back to NaN)."""
    kw = dict(row)
    for k in _TIME_FIELDS:
        if kw.get(k) is None:
            kw[k] = math.nan
    kw["token_times"] = list(kw.get("token_times") or [])
    return RequestRecord(**kw)

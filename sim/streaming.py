"""Per-request results of a trace fed in chunks, handed on chunk by chunk as the chunk settles.

A week-long trace is fed to the simulator in arrival-ordered chunks
(:mod:`driftsim.traces.stream`); only the chunks with a request still in flight keep
result columns. Once every request of the oldest chunk has finished or been
refused, its rows go to a sink, in trace order (so a file written this way
equals the in-memory table row for row), and its columns are dropped.
Memory therefore follows the requests in flight, not the trace.

Sinks: :class:`FrameSink` (keep the table), :class:`ParquetSink` (one row
group per chunk, written as it settles) and :class:`SummarySink` (the
summary only, via :class:`driftsim.sim.metrics.StreamingSummary`).
"""

from __future__ import annotations

import math

import os
from bisect import bisect_right
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import polars as pl

from driftsim.sim.metrics import StreamingSummary
from driftsim.sim.request import SimRequest
from driftsim.sim.results import STATUS_PENDING, ResultRecorder
from driftsim.traces.schema import empty_trace

#: trace rows per chunk when a trace is fed in chunks
DEFAULT_CHUNK_ROWS = 65_536


class _RowColumn:
    """One ResultRecorder column addressed by trace row across the open chunks (``rec.attempts[i] = k``)."""

    __slots__ = ("_results", "_name")

    def __init__(self, results: ChunkedResults, name: str) -> None:
        self._results, self._name = results, name

    def __getitem__(self, idx: int):
        c = self._results._chunk(idx)
        return getattr(c.rec, self._name)[idx - c.rec.base]

    def __setitem__(self, idx: int, value) -> None:
        c = self._results._chunk(idx)
        getattr(c.rec, self._name)[idx - c.rec.base] = value


class _Chunk:
    __slots__ = ("trace", "rec", "pending", "arrived")

    def __init__(self, trace: pl.DataFrame, base: int) -> None:
        self.trace = trace
        self.rec = ResultRecorder(trace.height, base=base)
        self.pending = trace.height  # rows not yet finished or refused
        self.arrived = False  # every row has been released (or refused) at its arrival


class ChunkedResults:
    """Result columns for the open chunks of a trace; settled chunks go to ``emit`` in trace order.

    Requests are addressed by their trace row (``SimRequest.idx``), as with
    one :class:`~driftsim.sim.results.ResultRecorder`, whose columns it also offers
    by trace row (``attempts``, ``reasons``, ``length_capped``).
    ``finalize(recorder, chunk)`` turns a settled chunk into its rows of the
    results table.
    """

    def __init__(
        self,
        emit: Callable[[pl.DataFrame], None],
        finalize: Callable[[ResultRecorder, pl.DataFrame], pl.DataFrame],
    ) -> None:
        self._emit = emit
        self._finalize = finalize
        self._open: list[_Chunk] = []
        self._bases: list[int] = []
        self.rows = 0  # trace rows opened so far
        self.attempts = _RowColumn(self, "attempts")
        self.reasons = _RowColumn(self, "reasons")
        self.length_capped = _RowColumn(self, "length_capped")
        self.on_settle: Callable[[int, float], None] | None = None  # (trace row, time): a closed-loop sender listens

    def open(self, chunk: pl.DataFrame) -> ResultRecorder:
        """Start recording the next chunk of the trace (rows ``rows`` .. ``rows + height - 1``)."""
        c = _Chunk(chunk, self.rows)
        self._open.append(c)
        self._bases.append(self.rows)
        self.rows += chunk.height
        return c.rec

    def arrived(self) -> None:
        """Every row of the newest chunk has arrived: it may settle now."""
        self._open[-1].arrived = True
        self._flush()

    def at(self, idx: int) -> ResultRecorder:
        """The recorder holding trace row ``idx`` (its chunk must be open)."""
        return self._chunk(idx).rec

    def _chunk(self, idx: int) -> _Chunk:
        return self._open[bisect_right(self._bases, idx) - 1]

    # ---- outcomes: each settles one request
    def finish(self, req: SimRequest, t: float, replica: int) -> None:
        c = self._chunk(req.idx)
        c.rec.finish(req, t, replica)
        self._settled(c, req.idx, t)

    def reject(self, idx: int, reason: str, t: float = math.nan) -> None:
        c = self._chunk(idx)
        c.rec.reject(idx, reason)
        self._settled(c, idx, t)

    def give_up(self, idx: int, status: int, reason: str, generated: int = 0, t: float = math.nan) -> None:
        c = self._chunk(idx)
        c.rec.give_up(idx, status, reason, generated)
        self._settled(c, idx, t)

    def cap_length(self, idx: int) -> None:
        self.at(idx).cap_length(idx)

    # ---- many outcomes at once (the compiled core's); no sender listens on that path
    def finish_rows(self, idx: np.ndarray, scheduled_s: np.ndarray, first_token_s: np.ndarray, finish_s: np.ndarray,
                    generated: np.ndarray, preemptions: np.ndarray, *, replica: np.ndarray,
                    cached_tokens: np.ndarray) -> None:
        """:meth:`finish` for many trace rows (in any order) at once, with the replica of each."""
        for c, sel in self._by_chunk(idx):
            c.rec.finish_rows(idx[sel], replica[sel], scheduled_s[sel], first_token_s[sel], finish_s[sel],
                              generated[sel], preemptions[sel], cached_tokens[sel])
            self._settled_rows(c, int(sel.sum()))

    def reject_rows(self, idx: np.ndarray, reasons: list[str]) -> None:
        """:meth:`reject` for many trace rows, with one reason each."""
        for c, sel in self._by_chunk(idx):
            for i, reason in zip(idx[sel].tolist(), (r for r, keep in zip(reasons, sel) if keep)):
                c.rec.reject(i, reason)
            self._settled_rows(c, int(sel.sum()))

    def _by_chunk(self, idx: np.ndarray):
        if self.on_settle is not None:
            raise RuntimeError("rows settled in bulk would not be reported to the sender listening on this run")
        which = np.searchsorted(np.asarray(self._bases), idx, side="right") - 1
        return [(self._open[k], which == k) for k in np.unique(which).tolist()]

    def _settled_rows(self, c: _Chunk, count: int) -> None:
        c.pending -= count
        if c.pending <= 0 and c is self._open[0]:
            self._flush()

    def _settled(self, c: _Chunk, idx: int, t: float) -> None:
        if self.on_settle is not None:
            self.on_settle(idx, t)
        self._settled_rows(c, 1)

    def _flush(self) -> None:
        while self._open:
            c = self._open[0]
            if not (c.arrived and c.pending <= 0 and not (c.rec.status == STATUS_PENDING).any()):
                return
            self._pop()

    def _pop(self) -> None:
        c = self._open.pop(0)
        self._bases.pop(0)
        self._emit(self._finalize(c.rec, c.trace))

    def close(self, rest: Iterable[pl.DataFrame] = ()) -> None:
        """End of the run: requests still in flight, and the ``rest`` of the trace, are unfinished."""
        for c in self._open:
            c.rec.mark_unfinished()
        while self._open:
            self._pop()
        for chunk in rest:
            rec = self.open(chunk)
            rec.mark_unfinished()
            self._pop()
        if self.rows == 0:  # an empty trace still gives a (row-less) table with every column
            self.open(empty_trace())
            self._pop()


# --------------------------------------------------------------------------- sinks


class FrameSink:
    """Keep every chunk's rows; ``frame()`` is the whole results table."""

    def __init__(self) -> None:
        self.parts: list[pl.DataFrame] = []

    def write(self, frame: pl.DataFrame) -> None:
        self.parts.append(frame)

    def frame(self) -> pl.DataFrame:
        return self.parts[0] if len(self.parts) == 1 else pl.concat(self.parts, rechunk=True)


class SummarySink:
    """Fold each chunk's rows into a :class:`~driftsim.sim.metrics.StreamingSummary` and drop them."""

    def __init__(self, summary: StreamingSummary | None = None) -> None:
        self.summary = summary or StreamingSummary()

    def write(self, frame: pl.DataFrame) -> None:
        self.summary.add(frame)


class ParquetSink(SummarySink):
    """Write each chunk's rows as one row group of a Parquet file, and fold them into the summary.

    The file is written under ``<name>.partial`` and renamed when the run
    completes, so a file with the final name is always whole; after a crash
    :meth:`abort` closes the partial file readable, with every row group
    written so far.
    """

    def __init__(self, path: str | os.PathLike, summary: StreamingSummary | None = None) -> None:
        super().__init__(summary)
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self._writer = None  # pyarrow.parquet.ParquetWriter, opened with the first rows
        self.rows = 0

    def write(self, frame: pl.DataFrame) -> None:
        table = frame.to_arrow()
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            import pyarrow.parquet as pq  # here, not at import: pyarrow costs ~30 MB of RSS

            self._writer = pq.ParquetWriter(self.partial, table.schema)
        self._writer.write_table(table)
        self.rows += frame.height
        super().write(frame)

    def close(self) -> Path:
        """Finish the file and give it its final name."""
        self._writer.close()
        os.replace(self.partial, self.path)
        return self.path

    def abort(self) -> None:
        """Close the partial file so the row groups written so far stay readable."""
        if self._writer is not None:
            self._writer.close()

"""Read a native trace file lazily, in arrival-ordered chunks, for traces too big to hold as one table.

A week of production traffic is tens of millions of requests. Loading it
whole (:func:`driftsim.traces.loaders.load_trace`) costs about a hundred bytes a row
before the simulator has started; :class:`TraceStream` instead reads
driftsim's native Parquet (row groups, via pyarrow) or CSV (polars'
streaming scan) a chunk at a time, validating each chunk exactly as the
native loader does, with the same messages naming file, row and field.

A first pass reads only ``request_id`` and ``arrival_s`` (chunk by chunk)
to count the rows and check that ids are unique and arrivals in order, so a
bad file fails before the simulation starts, not hours into it. A streamed
trace cannot be sorted: out-of-order arrivals are an error here (the
in-memory loader sorts them and reports the repair).

Rate scaling, duration clipping, the first N requests and per-tenant
columns (SLOs, priorities) are applied per chunk; tenant assignment by
weight needs the whole table and is not offered.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator

import numpy as np
import polars as pl

from driftsim.traces.loaders import (
    _NATIVE_NUMBERS,
    _ROW,
    LoadReport,
    _container,
    _csv_header,
    _id_lists,
    _number,
    _require,
    _source,
    _text,
    detect_format,
)
from driftsim.traces.schema import REQUEST_SCHEMA, REQUIRED_COLUMNS, TraceError, check_prefix_ids, check_sessions

__all__ = ["DEFAULT_CHUNK_ROWS", "TraceStream", "scan_trace"]

DEFAULT_CHUNK_ROWS = 65_536
_READ_BUFFER = 1 << 20  # bytes read from a Parquet file at a time


class TraceStream:
    """A native trace file as an iterable of request-table chunks (REQUEST_SCHEMA), in arrival order.

    ``rows`` is the number of requests the iteration yields (known from the
    first pass); ``report`` says what was read and ignored. Iterate as
    often as needed: each iteration reads the file again.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        rate_scale: float = 1.0,
        duration_s: float | None = None,
        max_requests: int | None = None,
        map_chunk: Callable[[pl.DataFrame], pl.DataFrame] | None = None,
    ) -> None:
        self.path, self.source = _source(path)
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows: expected at least 1, got {chunk_rows}")
        if not (math.isfinite(rate_scale) and rate_scale > 0):
            raise ValueError(f"rate_scale: expected a finite number > 0, got {rate_scale!r}")
        if duration_s is not None and not duration_s >= 0:
            raise ValueError(f"duration_s: expected a number >= 0, got {duration_s!r}")
        if max_requests is not None and max_requests < 0:
            raise ValueError(f"max_requests: expected at least 0, got {max_requests}")
        self.chunk_rows = chunk_rows
        self.rate_scale = float(rate_scale)
        self.duration_s = duration_s
        self.max_requests = max_requests
        self.map_chunk = map_chunk
        self.container = _container(self.path)
        if self.container == "jsonl":
            raise TraceError("the native format is CSV or Parquet, not JSON lines", source=self.source)
        if self.container == "csv":
            found = _csv_header(self.path, self.source)
        else:
            import pyarrow.parquet as pq  # here, not at import: pyarrow costs ~30 MB of RSS

            try:
                found = pq.ParquetFile(self.path).schema_arrow.names
            except Exception as e:  # pyarrow raises several types for a file that is not Parquet
                raise TraceError(f"could not read the file as parquet: {e}", source=self.source) from e
        _require(found, REQUIRED_COLUMNS, "native", self.source)
        self.columns = [c for c in REQUEST_SCHEMA if c in found]
        self.report = LoadReport(source=self.source, format="native")
        extra = [c for c in found if c not in REQUEST_SCHEMA]
        if extra:
            self.report.repairs.append(f"ignored {len(extra)} column(s) not in the request schema: {extra}")
        self.rows = self._first_pass()
        self.report.rows_loaded = self.rows

    # ---- reading
    def _raw(self, columns: list[str]) -> Iterator[pl.DataFrame]:
        """The file's columns as stored (CSV: text), a chunk at a time, numbered by data row."""
        row = 1
        try:
            if self.container == "csv":
                lf = pl.scan_csv(self.path, infer_schema=False).select(columns)
                batches = lf.collect_batches(chunk_size=self.chunk_rows)
            else:
                import pyarrow.parquet as pq  # NOTE: here, not at import: pyarrow costs ~30 MB of RSS

                # a buffered stream: reading whole column chunks at once made RSS grow with the file
                pf = pq.ParquetFile(self.path, buffer_size=_READ_BUFFER)
                batches = (pl.from_arrow(b) for b in pf.iter_batches(batch_size=self.chunk_rows, columns=columns))
            for df in batches:
                if df.height:
                    yield df.with_row_index(_ROW, offset=row)
                    row += df.height
        except (pl.exceptions.PolarsError, OSError) as e:
            raise TraceError(f"could not read the file as {self.container}: {e}", source=self.source) from e

    def _first_pass(self) -> int:
        """Count rows; check ids unique and arrivals numeric, >= 0 and in order; apply the clipping."""
        rows_read, kept, last = 0, 0, -math.inf
        increasing, last_id = True, None  # strictly increasing ids cannot repeat (the usual case)
        for raw in self._raw(["request_id", "arrival_s"]):
            rid = _number(raw, "request_id", source=self.source, integer=True).to_numpy()
            arr = _number(raw, "arrival_s", source=self.source, integer=False, minimum=0).to_numpy()
            prev = np.concatenate([[last], arr[:-1]])
            late = np.flatnonzero(arr < prev)
            if late.size:
                j = int(late[0])
                raise TraceError(
                    f"arrival {arr[j]!r} comes before the previous row's {prev[j]!r}; a streamed trace must be"
                    " in arrival order (sort the file by arrival_s, or load it whole, which sorts)",
                    source=self.source,
                    row=int(raw[_ROW][j]),
                    field="arrival_s",
                )
            if increasing and not (np.all(rid[1:] > rid[:-1]) and (last_id is None or rid[0] > last_id)):
                increasing = False
            last_id, last = int(rid[-1]), float(arr[-1])
            rows_read += raw.height
            scaled = arr / self.rate_scale
            kept += int(np.sum(scaled < self.duration_s)) if self.duration_s is not None else raw.height
        if rows_read == 0:
            raise TraceError("empty trace: no data rows", source=self.source)
        if not increasing:
            self._check_unique_ids()
        self.report.rows_read = rows_read
        return kept if self.max_requests is None else min(kept, self.max_requests)

    def _check_unique_ids(self) -> None:
        """Ids are not strictly increasing: read the id column once more and look for a repeat.

        Names the first row (in file order) that repeats an earlier id, and that earlier row,
        as the in-memory loader does.
        """
        ids = np.concatenate(
            [_number(raw, "request_id", source=self.source, integer=True).to_numpy() for raw in self._raw(["request_id"])]
        )
        order = np.argsort(ids, kind="stable")
        ranked = ids[order]
        repeats = order[np.flatnonzero(ranked[1:] == ranked[:-1]) + 1]  # later rows of equal ids
        if repeats.size:
            i = int(repeats.min())
            first = int(np.flatnonzero(ids == ids[i])[0])
            more = f" ({repeats.size - 1} more repeated ids)" if repeats.size > 1 else ""
            raise TraceError(
                f"duplicate request id {int(ids[i])!r}, first seen at row {first + 1}{more}; ids must be unique",
                source=self.source,
                row=i + 1,
                field="request_id",
            )

    def __iter__(self) -> Iterator[pl.DataFrame]:
        left = self.rows
        for raw in self._raw(self.columns):
            if left <= 0:
                return
            df = self._parse(raw)
            if self.rate_scale != 1.0:
                df = df.with_columns(pl.col("arrival_s") / self.rate_scale)
            if self.duration_s is not None:
                df = df.filter(pl.col("arrival_s") < self.duration_s)
            df = df.head(left)
            if df.height == 0:
                return
            if self.map_chunk is not None:
                df = self.map_chunk(df)
            left -= df.height
            yield df

    def _parse(self, raw: pl.DataFrame) -> pl.DataFrame:
        """Validate and convert one chunk exactly as :func:`driftsim.traces.loaders.read_native` does."""
        columns: dict[str, pl.Series] = {}
        for col in self.columns:
            required = col in REQUIRED_COLUMNS
            if col in _NATIVE_NUMBERS:
                integer, minimum, above = _NATIVE_NUMBERS[col]
                columns[col] = _number(
                    raw, col, source=self.source, integer=integer, minimum=minimum, strictly_above=above,
                    nullable=not required,
                )
            elif col == "prefix_ids":
                columns[col] = _id_lists(raw, col, source=self.source)
            else:
                columns[col] = _text(raw, col, source=self.source, nullable=not required, strip=col == "tenant")
        df = pl.DataFrame(columns).with_columns(raw[_ROW])
        df = df.select(
            *((pl.col(c).cast(t) if c in columns else pl.lit(None, dtype=t).alias(c)) for c, t in REQUEST_SCHEMA.items()),
            _ROW,
        )
        check_prefix_ids(df, self.source, row_col=_ROW)
        check_sessions(df, self.source, row_col=_ROW)  # NOTE: per chunk: a session split across chunks is checked in parts
        return df.drop(_ROW)


def scan_trace(path: str | os.PathLike, format: str = "auto", **options) -> TraceStream:
    """A :class:`TraceStream` over a native trace; other formats need :func:`driftsim.traces.loaders.load_trace`."""
    name = detect_format(path) if format == "auto" else format
    if name != "native":
        raise TraceError(
            f"streamed reading takes driftsim's native Parquet or CSV, not the {name} format; load it with"
            " load_trace and write it once with driftsim.traces.writer.write_trace (Parquet) to stream it",
            source=str(path),
        )
    return TraceStream(path, **options)

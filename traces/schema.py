"""The one request table every part of driftsim speaks.

A trace is a polars DataFrame with exactly these columns, in this order.
Loaders produce it, the generator produces it, the simulator consumes it and
the writer stores it. Optional columns are always present (null where a
source has no value), so downstream code never checks for a column.
"""

from __future__ import annotations

import polars as pl

#: column name -> polars dtype. Units in the comments.
REQUEST_SCHEMA: dict[str, pl.DataType] = {
    "request_id": pl.Int64,  # unique within a trace
    "arrival_s": pl.Float64,  # seconds since the trace start, >= 0, non-decreasing
    "tenant": pl.String,  # tenant name (tier); "default" for tenant-less sources
    "input_tokens": pl.Int64,  # prompt length in tokens, >= 1
    "output_tokens": pl.Int64,  # real generated length in tokens, >= 1
    "prompt": pl.String,  # optional prompt text
    "max_tokens": pl.Int64,  # optional per-request generation cap
    "priority": pl.Int64,  # optional priority, lower is more urgent
    "slo_ttft_s": pl.Float64,  # optional time-to-first-token objective, seconds
    "slo_e2e_s": pl.Float64,  # optional end-to-end objective, seconds
    # optional prefix identity: ids of the prompt's consecutive blocks of prefix_block_tokens tokens
    # (the last may be partial), chained: two requests whose first k ids are equal have equal first
    # k * prefix_block_tokens tokens (Mooncake's hash_ids are such ids, 512 tokens each); more ids than
    # the prompt has blocks name its answer's blocks too (the one straddling prompt and answer included),
    # which a later prompt repeating the answer (a chat's next turn) reuses
    "prefix_ids": pl.List(pl.Int64),
    "prefix_block_tokens": pl.Int64,  # tokens each prefix id covers, >= 1; given exactly where prefix_ids is
    # optional multi-turn sessions: a turn is sent think_s after the previous turn of its session
    # completes, and not before its arrival_s (driftsim.sim.sessions); turns of a session come in
    # increasing turn order
    "session_id": pl.Int64,
    "turn": pl.Int64,  # 1, 2, ... within the session; given exactly where session_id is
    "think_s": pl.Float64,  # pause between the previous turn's completion and this turn's send, s, >= 0
}

REQUIRED_COLUMNS: tuple[str, ...] = (
    "request_id",
    "arrival_s",
    "tenant",
    "input_tokens",
    "output_tokens",
)
OPTIONAL_COLUMNS: tuple[str, ...] = tuple(c for c in REQUEST_SCHEMA if c not in REQUIRED_COLUMNS)


class TraceError(ValueError):
    """Bad trace input. The message names the file, row and field, and what was expected."""

    def __init__(self, message: str, *, source: str | None = None, row: int | None = None, field: str | None = None):
        where = []
        if source:
            where.append(str(source))
        if row is not None:
            where.append(f"row {row}")
        if field:
            where.append(f"field '{field}'")
        self.source, self.row, self.field = source, row, field
        super().__init__(f"{': '.join([', '.join(where)]) + ': ' if where else ''}{message}")


def empty_trace() -> pl.DataFrame:
    """A trace with no rows and the full schema."""
    return pl.DataFrame(schema=REQUEST_SCHEMA)


def _first_bad(
    df: pl.DataFrame, bad: pl.Expr, column: str, expected: str, source: str | None, *, row_col: str | None = None
) -> None:
    """Raise a TraceError naming the first row where `bad` holds, and how many more there are.

    Rows are 1-based data rows: the frame position, or the value of `row_col`
    when the frame carries the row numbers of its source file.
    """
    hits = df.select(pl.arg_where(bad)).to_series()
    if hits.len():
        i = int(hits[0])
        row = int(df[row_col][i]) if row_col else i + 1
        more = f" ({hits.len() - 1} more rows like this)" if hits.len() > 1 else ""
        value = df[column][i]
        if isinstance(value, pl.Series):
            value = value.to_list()
        got = "an empty value" if value is None else repr(value)
        raise TraceError(f"expected {expected}, got {got}{more}", source=source, row=row, field=column)


def _check_unique(
    df: pl.DataFrame, column: str, source: str | None, *, row_col: str | None = None, field: str | None = None
) -> None:
    """Raise a TraceError at the first id that repeats an earlier one, naming both rows."""
    ids = df[column]
    if ids.null_count() == 0 and ids.dtype.is_integer() and ids.is_sorted() and (ids.diff() != 0).sum() == len(ids) - 1:
        return  # strictly increasing (as most traces number their requests): no hashing needed
    hits = df.select(pl.arg_where(~pl.col(column).is_first_distinct())).to_series()
    if hits.len():
        i = int(hits[0])
        value = df[column][i]
        j = int(df.select(pl.arg_where(pl.col(column) == value)).to_series()[0])
        row_i, row_j = (int(df[row_col][i]), int(df[row_col][j])) if row_col else (i + 1, j + 1)
        more = f" ({hits.len() - 1} more repeated ids)" if hits.len() > 1 else ""
        raise TraceError(
            f"duplicate request id {value!r}, first seen at row {row_j}{more}; ids must be unique",
            source=source,
            row=row_i,
            field=field or column,
        )


def validate_trace(df: pl.DataFrame, *, source: str | None = None) -> None:
    """Check that `df` is a well-formed request table; raise TraceError naming the row and field if not.

    Checked: exact columns, order and dtypes; no nulls in required columns;
    non-empty tenant names; unique request ids; finite arrivals >= 0 in
    non-decreasing order; token lengths >= 1; optional caps >= 1 and SLOs > 0
    where given. The writer calls this (and the simulator may), so a
    hand-built table fails early rather than mid-run.
    """
    if not isinstance(df, pl.DataFrame):
        raise TraceError(f"expected a polars DataFrame, got {type(df).__name__}", source=source)
    names, expected = df.columns, list(REQUEST_SCHEMA)
    if names != expected:
        missing = [c for c in expected if c not in names]
        extra = [c for c in names if c not in REQUEST_SCHEMA]
        detail = []
        if missing:
            detail.append(f"missing {missing}")
        if extra:
            detail.append(f"unexpected {extra}")
        if not detail:
            detail.append("columns out of order")
        raise TraceError(f"{'; '.join(detail)}; found {names}, expected {expected}", source=source)
    for col, dtype in REQUEST_SCHEMA.items():
        if df.schema[col] != dtype:
            raise TraceError(f"dtype {df.schema[col]} where {dtype} is expected", source=source, field=col)
    for col in REQUIRED_COLUMNS:
        _first_bad(df, pl.col(col).is_null(), col, "a value (required column)", source)
    _first_bad(df, pl.col("tenant") == "", "tenant", "a non-empty tenant name", source)
    _check_unique(df, "request_id", source)
    arr = pl.col("arrival_s")
    _first_bad(df, ~arr.is_finite() | (arr < 0), "arrival_s", "a finite number >= 0", source)
    _first_bad(df, arr < arr.shift(1), "arrival_s", "arrivals in non-decreasing order", source)
    for col in ("input_tokens", "output_tokens", "max_tokens"):
        _first_bad(df, pl.col(col) < 1, col, "an integer >= 1", source)
    for col in ("slo_ttft_s", "slo_e2e_s"):
        _first_bad(df, ~pl.col(col).is_finite() | (pl.col(col) <= 0), col, "a finite number > 0", source)
    check_prefix_ids(df, source)
    check_sessions(df, source)


def check_sessions(df: pl.DataFrame, source: str | None, *, row_col: str | None = None) -> None:
    """Session turns must be numbered (``turn >= 1`` exactly where ``session_id`` is given), think
    times finite and >= 0, and turns must not go back in time: within a session, a later row (a
    later or equal arrival) has a higher turn number."""
    sid, turn, think = pl.col("session_id"), pl.col("turn"), pl.col("think_s")
    _first_bad(df, turn < 1, "turn", "an integer >= 1", source, row_col=row_col)
    _first_bad(df, sid.is_not_null() & turn.is_null(), "turn", "a turn number where session_id is given",
               source, row_col=row_col)  # fmt: skip
    _first_bad(df, sid.is_null() & (turn.is_not_null() | think.is_not_null()), "session_id",
               "a session id where turn or think_s is given", source, row_col=row_col)  # fmt: skip
    _first_bad(df, ~think.is_finite() | (think < 0), "think_s", "a finite number >= 0", source, row_col=row_col)
    if df["session_id"].null_count() < df.height:
        back = sid.is_not_null() & (turn <= turn.shift(1).over(sid)).fill_null(False)
        _first_bad(df, back, "turn", "turns of a session in increasing order over time (this turn arrives after "
                   "a turn of its session with the same or a higher number)", source, row_col=row_col)  # fmt: skip


def check_prefix_ids(df: pl.DataFrame, source: str | None, *, row_col: str | None = None,
                     ids_field: str = "prefix_ids") -> None:
    """Prefix identity must fit its request: ``prefix_block_tokens >= 1`` exactly where ``prefix_ids`` is
    given, ids without nulls, and no more ids than the prompt and its answer have blocks
    (``ceil((input_tokens + output_tokens) / prefix_block_tokens)``). ``ids_field``: the source's
    name for the ids, for messages."""
    if ids_field != "prefix_ids":
        df = df.rename({"prefix_ids": ids_field})
    ids, size = pl.col(ids_field), pl.col("prefix_block_tokens")
    _first_bad(df, size < 1, "prefix_block_tokens", "an integer >= 1", source, row_col=row_col)
    _first_bad(df, ids.is_not_null() & size.is_null(), "prefix_block_tokens",
               "tokens per prefix id where prefix_ids is given", source, row_col=row_col)  # fmt: skip
    _first_bad(df, ids.is_null() & size.is_not_null(), ids_field,
               "prefix ids where prefix_block_tokens is given", source, row_col=row_col)  # fmt: skip
    _first_bad(df, ids.list.eval(pl.element().is_null()).list.any(), ids_field, "integer ids without gaps",
               source, row_col=row_col)  # fmt: skip
    blocks = (pl.col("input_tokens") + pl.col("output_tokens") + size - 1) // size
    _first_bad(df, ids.list.len() > blocks, ids_field,
               "at most ceil((input_tokens + output_tokens) / prefix_block_tokens) ids (no more blocks than the "
               "prompt and its answer hold)", source, row_col=row_col)  # fmt: skip

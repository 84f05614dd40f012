"""Trace loaders: one pure function per public trace format, from a file to the one request table.

Each reader validates as it reads and fails with a TraceError naming the
file, the 1-based data row (the Nth record after the header; blank JSONL
lines are not counted) and the source column. The few repairs a loader may
make are listed in its LoadReport, so nothing is changed or dropped
silently:

* out-of-order arrivals are sorted (stably, ties keep file order);
* failed requests are dropped where the format marks them (BurstGPT: 0
  response tokens), with their count and rows;
* blank CSV rows (no value in any column read, e.g. a trailing empty line)
  are skipped, with their count and rows;
* whitespace around tenant names is stripped, with the count of names changed;
* columns of a native file that the schema lacks are ignored, by name.

So ``rows_read == rows_loaded + rows dropped or skipped as listed``. Files
that are not UTF-8 text (compressed, UTF-16, binary), CSV with bare-CR line
ends, a byte-order mark in JSON lines, malformed CSV/JSON records,
timestamps outside 1678..2261 (where nanoseconds fit 64 bits) and integers
written as floats beyond 2**53 (no longer exact) are refused by name.

Ids: a source's own id column (Bailian `chat_id`, native `request_id`) is
kept; otherwise `request_id` is the 0-based data row, so it survives sorting
and dropping and points back into the file. Arrivals: formats with relative
times keep them (they must be >= 0); wall-clock formats (Azure) count from
the earliest timestamp.

Scaling, clipping and tenant assignment are not done here: see transform.py.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl

from driftsim.traces.bench_workload import arrival_times
from driftsim.traces.schema import (
    OPTIONAL_COLUMNS,
    REQUEST_SCHEMA,
    REQUIRED_COLUMNS,
    TraceError,
    _check_unique,
    check_prefix_ids,
    check_sessions,
    _first_bad,
)
from driftsim.traces.tokens import TokenCounter, WhitespaceCounter

__all__ = [
    "FORMATS",
    "LoadReport",
    "detect_format",
    "load_trace",
    "load_trace_with_report",
    "read_azure",
    "read_bailian",
    "read_burstgpt",
    "read_guidellm",
    "read_mooncake",
    "read_native",
    "read_sharegpt",
    "read_vidur",
    "read_vllm_bench",
    "read_vllm_bench_latencies",
]

_ROW = "__row"  # 1-based data row of the source file, carried along for error messages
_MAX_LISTED_ROWS = 10  # rows named in a repair message before "..."


@dataclass
class LoadReport:
    """What a load did besides reading: the repairs a caller (the CLI) should show the user."""

    source: str
    format: str
    rows_read: int = 0  # data rows in the file
    rows_loaded: int = 0  # rows in the returned table
    repairs: list[str] = field(default_factory=list)  # one human-readable line per repair

    @property
    def rows_dropped(self) -> int:
        return self.rows_read - self.rows_loaded

    def __str__(self) -> str:
        head = f"{self.source} ({self.format}): {self.rows_loaded} of {self.rows_read} rows loaded"
        return "\n".join([head, *(f"  - {r}" for r in self.repairs)])


# --------------------------------------------------------------------------- formats


@dataclass(frozen=True)
class _Format:
    """How one public format maps onto the request table (source column names as the file spells them)."""

    name: str
    container: Literal["csv", "jsonl"]
    time: str
    time_unit: Literal["datetime", "s", "ms"]
    input: str
    output: str
    request_id: str | None = None  # None: request_id is the 0-based data row
    tenant: str | None = None  # None: tenant "default"
    failed_zero_output: bool = False  # 0 output tokens marks a failed request: dropped and reported
    hints: tuple[str, ...] = ()  # other columns the format is known by (auto-detection only)
    prefix_ids: str | None = None  # optional column of per-block ids -> prefix_ids
    prefix_block_tokens: int = 0  # tokens each of those ids covers
    parent: str | None = None  # optional column: the id of the request this one follows up (-1: none)

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(c for c in (self.request_id, self.time, self.tenant, self.input, self.output) if c)


_AZURE = _Format("azure", "csv", "TIMESTAMP", "datetime", "ContextTokens", "GeneratedTokens")
_BURSTGPT = _Format(
    "burstgpt",
    "csv",
    "Timestamp",
    "s",
    "Request tokens",
    "Response tokens",
    tenant="Model",
    failed_zero_output=True,
    hints=("Total tokens", "Log Type"),
)
#: tokens each Mooncake ``hash_ids`` entry covers (the trace's block size, per its README)
MOONCAKE_BLOCK_TOKENS = 512
_MOONCAKE = _Format("mooncake", "jsonl", "timestamp", "ms", "input_length", "output_length", hints=("hash_ids",),
                    prefix_ids="hash_ids", prefix_block_tokens=MOONCAKE_BLOCK_TOKENS)
#: tokens each Bailian ``hash_ids`` entry covers (the released files are named ``..._blksz_16.jsonl``)
BAILIAN_BLOCK_TOKENS = 16
_BAILIAN = _Format(
    "bailian",
    "jsonl",
    "timestamp",
    "s",
    "input_length",
    "output_length",
    request_id="chat_id",
    hints=("parent_chat_id", "type", "turn", "hash_ids"),
    prefix_ids="hash_ids",
    prefix_block_tokens=BAILIAN_BLOCK_TOKENS,
    parent="parent_chat_id",
)
_VIDUR = _Format("vidur", "csv", "arrived_at", "s", "num_prefill_tokens", "num_decode_tokens")
_PUBLIC = {f.name: f for f in (_AZURE, _BURSTGPT, _MOONCAKE, _BAILIAN, _VIDUR)}


def _describe_formats() -> str:
    parts = [f"{f.name} ({f.container}: {', '.join(f.required)})" for f in _PUBLIC.values()]
    parts.append(f"native (csv or parquet: {', '.join(REQUIRED_COLUMNS)} [+ {', '.join(OPTIONAL_COLUMNS)}])")
    parts.append("vllm-bench (json: a `vllm bench serve --save-detailed` result)")
    parts.append("guidellm (json: a GuideLLM benchmark report)")
    parts.append("sharegpt (json: a list of conversations)")
    return "; ".join(parts)


# --------------------------------------------------------------------------- column parsing


def _nulls(dtype: pl.DataType, n: int) -> pl.Series:
    return pl.Series(dtype=dtype).extend_constant(None, n)


def _id_lists(df: pl.DataFrame, col: str, *, source: str, json: bool = False) -> pl.Series:
    """Parse a column of integer id lists, raising at the first bad row.

    Parquet stores a list of integers; text is a JSON array (``[3, 7]``) or, in CSV, ids separated
    by spaces (``3 7``, what :func:`driftsim.traces.writer.write_trace` writes). Blank means missing.
    ``json``: the text must be a JSON array (a JSON lines field).
    """
    dtype = df.schema[col]
    if dtype == pl.Null:
        return _nulls(pl.List(pl.Int64), df.height).alias(col)
    if isinstance(dtype, pl.List) and dtype.inner.is_integer():
        return df[col].cast(pl.List(pl.Int64)).alias(col)
    if dtype != pl.String:
        raise TraceError(f"expected lists of integer ids, found a column of type {dtype}", source=source, field=col)
    txt = df[col].str.strip_chars()
    txt = txt.set(txt == "", None)
    bracketed = txt.str.starts_with("[") & txt.str.ends_with("]")
    inner = pl.when(bracketed).then(txt.str.slice(1, txt.str.len_chars() - 2)).otherwise(txt)
    stage = pl.DataFrame({"t": txt, "b": bracketed}).with_columns(
        inner.str.replace_all(",", " ").str.extract_all(r"\S+").alias("tokens"))
    stage = stage.with_columns(pl.col("tokens").list.eval(pl.element().cast(pl.Int64, strict=False)).alias("ids"))
    shape = ~pl.col("b") if json else pl.col("t").str.contains(r"[\[\]]") & ~pl.col("b")  # brackets around all
    bad = stage.select(pl.col("t").is_not_null() & (
        pl.col("ids").list.eval(pl.element().is_null()).list.any().fill_null(True) | shape)).to_series()
    if bad.any():
        _first_bad(df, pl.lit(bad), col, "a list of integer block ids", source, row_col=_ROW)
    return stage["ids"].alias(col)


def _number(
    df: pl.DataFrame,
    col: str,
    *,
    source: str,
    integer: bool,
    minimum: float | None = None,
    strictly_above: bool = False,
    nullable: bool = False,
) -> pl.Series:
    """Parse one column (text or numeric) to Int64/Float64, raising at the first bad row.

    Text is stripped; blank means missing. Integers may be written as "12" or
    "12.0" (pandas writes the latter), the latter only up to 2**53 where a
    float is still exact; NaN and infinities are always rejected. Work is
    done in eager stages so no expression is evaluated twice.
    """
    dtype = df.schema[col]
    if dtype == pl.Null:  # a column with no values at all (a typed file's all-null column)
        df = df.with_columns(pl.col(col).cast(pl.String))
        dtype = pl.String
    if dtype == pl.String:
        txt = df[col].str.strip_chars()
        txt = txt.set(txt == "", None)
    elif dtype.is_numeric():
        txt = df[col]
    else:
        raise TraceError(f"expected numbers, found a column of type {dtype}", source=source, field=col)
    present = txt.is_not_null()
    if integer and dtype.is_integer():  # a typed file's whole numbers: only those beyond Int64 are bad
        value = txt.cast(pl.Int64, strict=False)
        ok = value.is_not_null()
        kind = "an integer"
    elif integer:
        # Exact integer parse first (ids beyond 2**53 survive), then integral floats such as "12.0".
        as_float = txt.cast(pl.Float64, strict=False)
        as_int = txt.cast(pl.Int64, strict=False) if not dtype.is_float() else _nulls(pl.Int64, len(txt))
        f = pl.col("f")
        whole = f.is_finite() & (f == f.floor()) & (f.abs() < 2.0**53)
        stage = pl.DataFrame({"i": as_int, "f": as_float})
        value = stage.select(pl.coalesce("i", pl.when(whole).then(f.cast(pl.Int64, strict=False)))).to_series()
        ok = value.is_not_null()
        kind = "an integer"
    else:
        value = txt.cast(pl.Float64, strict=False)
        ok = value.is_finite().fill_null(False)
        kind = "a finite number"
    if minimum is not None:
        ok = ok & ((value > minimum) if strictly_above else (value >= minimum)).fill_null(False)
        kind += f" {'>' if strictly_above else '>='} {minimum:g}"
    bad = present & ~ok
    if not nullable:
        bad = bad | ~present
    if bad.any():
        _first_bad(df, pl.lit(bad), col, kind, source, row_col=_ROW)
    return value.alias(col)


# "2023-11-16 18:17:03.9799600", "2024-05-10 00:00:00+00:00", "2024-05-10T00:00:00.5Z", ... naive is taken as UTC.
# ASCII digits only: the regex engine's \d would also match other scripts' digits.
_TIMESTAMP = (
    r"^([0-9]{4}-[0-9]{2}-[0-9]{2})[ T]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,9}))?"
    r"\s*(Z|UTC|[+-][0-9]{2}:?[0-9]{2})?$"
)
# Nanoseconds since the epoch fit an Int64 for these dates (1677-09-22 .. 2262-04-10, with a day's margin).
_FIRST_DAY, _LAST_DAY = -106750, 106749


def _timestamp_ns(df: pl.DataFrame, col: str, *, source: str) -> pl.Series:
    """Parse wall-clock timestamps to integer nanoseconds since the epoch (exact, unlike float seconds).

    Fast path: polars' strptime for the two layouts Azure uses (naive, and
    with a UTC offset). Anything else, and every error message, goes through
    the explicit regex parser below.
    """
    if df.schema[col] != pl.String:
        raise TraceError(
            f"expected timestamps as text, found a column of type {df.schema[col]}", source=source, field=col
        )
    txt = df[col].str.strip_chars()
    layouts = [(pl.Datetime("ns"), "%Y-%m-%d %H:%M:%S%.f"), (pl.Datetime("ns", "UTC"), "%Y-%m-%d %H:%M:%S%.f%#z")]
    first = txt.drop_nulls().head(1).to_list()
    if first and (first[0][-1:] == "Z" or first[0][-6:-5] in ("+", "-")):
        layouts.reverse()  # try the layout of the first row first; most files use one layout throughout
    fast = _nulls(pl.Int64, len(txt))
    for dtype, layout in layouts:
        fast = fast.fill_null(txt.str.strptime(dtype, layout, strict=False).cast(pl.Int64))
        if fast.null_count() == 0:
            break
    # strptime wraps nanoseconds around silently outside 1677..2262: leave other years to the checked parser.
    year_ok = txt.str.slice(0, 4).cast(pl.Int64, strict=False).is_between(1678, 2261).fill_null(False)
    fast = fast.zip_with(year_ok, _nulls(pl.Int64, len(txt)))
    if fast.null_count() == 0:
        return fast.alias(col)
    return _timestamp_ns_regex(df, col, source=source)


def _timestamp_ns_regex(df: pl.DataFrame, col: str, *, source: str) -> pl.Series:
    """The general timestamp parser: one regex, then integer arithmetic; names the first bad row."""
    names = ["date", "h", "m", "s", "frac", "tz"]
    parts = df.select(pl.col(col).str.strip_chars().str.extract_groups(_TIMESTAMP).alias("g")).unnest("g")
    parts = parts.rename(dict(zip(parts.columns, names)))
    tz = pl.col("tz")
    signed = tz.str.starts_with("+") | tz.str.starts_with("-")
    fields = parts.select(
        pl.col("date").str.to_date("%Y-%m-%d", strict=False).cast(pl.Int64).alias("days"),
        *(pl.col(c).cast(pl.Int64) for c in ("h", "m", "s")),
        pl.col("frac").str.pad_end(9, "0").cast(pl.Int64).fill_null(0),
        pl.when(signed)
        .then(
            pl.when(tz.str.starts_with("-")).then(-1).otherwise(1)
            * (tz.str.slice(1, 2).cast(pl.Int64) * 3600 + tz.str.slice(-2, 2).cast(pl.Int64) * 60)
        )
        .otherwise(0)
        .alias("offset_s"),
    )
    d, h, m, s = pl.col("days"), pl.col("h"), pl.col("m"), pl.col("s")
    out = fields.select(
        ((d * 86400 + h * 3600 + m * 60 + s - pl.col("offset_s")) * 1_000_000_000 + pl.col("frac")).alias(col),
        (d.is_between(_FIRST_DAY, _LAST_DAY) & (h < 24) & (m < 60) & (s <= 60) & (pl.col("offset_s").abs() < 86400))
        .fill_null(False)
        .alias("ok"),
    )
    if not out["ok"].all():
        _first_bad(
            df,
            pl.lit(~out["ok"]),
            col,
            "a timestamp like '2023-11-16 18:17:03.9799600' (optionally ending in +00:00 or Z), years 1678 to 2261",
            source,
            row_col=_ROW,
        )
    return out[col]


def _text(
    df: pl.DataFrame, col: str, *, source: str, nullable: bool, strip: bool, report: LoadReport | None = None
) -> pl.Series:
    """A text column; required ones must be non-empty. Names changed by stripping are counted in `report`."""
    dtype = df.schema[col]
    if dtype == pl.Null:  # a typed file's all-null column
        df = df.with_columns(pl.col(col).cast(pl.String))
    elif dtype not in (pl.String, pl.Categorical) and not isinstance(dtype, pl.Enum):
        raise TraceError(f"expected text, found a column of type {dtype}", source=source, field=col)
    value = pl.col(col).cast(pl.String)
    if strip:
        value = value.str.strip_chars()
    if not nullable:
        _first_bad(df, value.is_null() | (value == ""), col, "a non-empty name", source, row_col=_ROW)
    out = df.select(value.alias(col)).to_series()
    if strip and report is not None:
        changed = df.filter(pl.lit(out.ne_missing(df[col].cast(pl.String))))[_ROW]
        if changed.len():
            report.repairs.append(
                f"stripped whitespace around {changed.len()} {col} names at rows {_listed_rows(changed)}"
            )
    return out


# --------------------------------------------------------------------------- reading files


def _source(path: str | os.PathLike) -> tuple[Path, str]:
    p = Path(path)
    if not p.is_file():
        raise TraceError("no such file", source=str(path))
    return p, str(path)


_MAGIC = {
    b"\x1f\x8b": "a gzip-compressed file; decompress it first",
    b"PK\x03\x04": "a zip archive; extract the trace first",
    b"\x28\xb5\x2f\xfd": "a zstd-compressed file; decompress it first",
    b"BZh": "a bzip2-compressed file; decompress it first",
    b"\xfd7zXZ\x00": "an xz-compressed file; decompress it first",
    b"PAR1": "a Parquet file; give it a .parquet name",
    b"\xff\xfe": "UTF-16 text; save it as UTF-8",
    b"\xfe\xff": "UTF-16 text; save it as UTF-8",
}
_SNIFF_BYTES = 65536


def _check_text(path: Path, source: str) -> None:
    """Refuse, by its first bytes, a file that is not UTF-8 text with LF or CRLF line ends."""
    try:
        with open(path, "rb") as f:
            head = f.read(_SNIFF_BYTES)
    except OSError as e:
        raise TraceError(f"cannot read the file: {e.strerror or e}", source=source) from None
    for magic, what in _MAGIC.items():
        if head.startswith(magic):
            raise TraceError(f"not a text trace: {what}", source=source)
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 4 or len(head) < _SNIFF_BYTES:  # not just a character cut at the sniff boundary
            line = head[: e.start].count(b"\n") + 1
            raise TraceError(f"not UTF-8 text: line {line} has the byte {head[e.start]:#04x}", source=source) from None
    if b"\r" in head and b"\n" not in head:
        raise TraceError("lines end in a bare CR (classic Mac); save the file with LF or CRLF line ends", source=source)


def _csv_header(path: Path, source: str) -> list[str]:
    _check_text(path, source)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            header = next(csv.reader(f, strict=True), None)
    except (csv.Error, UnicodeDecodeError) as e:
        raise TraceError(f"could not read the CSV header line: {e}", source=source) from None
    if not header:
        raise TraceError("empty trace: the file has no header line", source=source)
    return header


def _first_record(path: Path, source: str) -> dict:
    _check_text(path, source)
    with open(path, encoding="utf-8", errors="replace") as f:  # _read names a later undecodable line
        if f.read(1) != "\ufeff":
            f.seek(0)
        else:
            raise TraceError(
                "starts with a byte-order mark, which JSON lines do not allow; save it without one", source=source
            )
        for line in f:
            if line.strip():
                if line.lstrip().startswith("["):
                    raise TraceError(
                        "a JSON array, not JSON lines (one object per line); ShareGPT conversations load with"
                        " format 'sharegpt'",
                        source=source,
                    )
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise TraceError(f"not valid JSON ({e.msg})", source=source, row=1) from e
                if not isinstance(rec, dict):
                    raise TraceError(f"expected a JSON object per line, got {type(rec).__name__}", source=source, row=1)
                return rec
    raise TraceError("empty trace: no records", source=source)


def _require(found: list[str], required: tuple[str, ...], fmt: str, source: str) -> None:
    missing = [c for c in required if c not in found]
    if missing:
        raise TraceError(
            f"missing column(s) {missing} for the {fmt} format; found {found}, expected {list(required)}",
            source=source,
        )


def _read(path: Path, source: str, container: str, columns: list[str]) -> pl.DataFrame:
    """Read the named columns as text (parquet: as stored), numbered by data row."""
    try:
        if container == "csv":
            lf = pl.scan_csv(path, infer_schema=False).select(columns)
        elif container == "jsonl":
            # Reading every field as text keeps bad values visible for the error message.
            lf = pl.scan_ndjson(path, schema={c: pl.String for c in columns})
        else:
            lf = pl.scan_parquet(path).select(columns)
        df = lf.with_row_index(_ROW, offset=1).collect()
        if container != "parquet":  # parquet is read column by column, where a copy into one chunk is a column more
            df = df.rechunk()  # one chunk per column, as parsed columns are
    except pl.exceptions.PolarsError as e:
        if container != "parquet":
            _locate_bad_record(path, source, container)
        raise TraceError(f"could not read the file as {container}: {e}", source=source) from e
    if df.height == 0:
        raise TraceError("empty trace: no data rows", source=source)
    return df


def _locate_bad_record(path: Path, source: str, container: str) -> None:
    """After the fast reader failed: find the first record that breaks the container's rules and name it.

    Slow (pure Python) but only ever run on a file that is already known bad.
    Returns when it finds nothing, and the caller raises the reader's own message.
    """
    with open(path, "rb") as f:
        for line_no, line in enumerate(f, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as e:
                what = f"not UTF-8 text: line {line_no} has the byte {line[e.start]:#04x}"
                raise TraceError(what, source=source) from None
    if container == "jsonl":
        with open(path, encoding="utf-8-sig") as f:
            row = 0
            for line in f:
                if not line.strip():
                    continue
                row += 1
                try:
                    rec = json.loads(line, parse_constant=_reject_constant)
                except (json.JSONDecodeError, ValueError) as e:
                    raise TraceError(f"not valid JSON ({getattr(e, 'msg', e)})", source=source, row=row) from None
                if not isinstance(rec, dict):
                    what = f"expected a JSON object per line, got {type(rec).__name__}"
                    raise TraceError(what, source=source, row=row)
                for key, value in rec.items():
                    if isinstance(value, float) and not math.isfinite(value):
                        raise TraceError("a number too large for a float", source=source, row=row, field=key)
        return
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f, strict=True)
        width, row = len(next(reader, [])), 0
        try:
            for row, rec in enumerate(reader, 1):
                if len(rec) > width:
                    raise TraceError(f"{len(rec)} fields where the header has {width}", source=source, row=row)
        except csv.Error as e:
            raise TraceError(f"malformed CSV ({e})", source=source, row=row + 1) from None


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")


def _drop_blank_rows(raw: pl.DataFrame, report: LoadReport) -> pl.DataFrame:
    """Drop CSV records with no value in any column read (blank lines, ",,,"), listing them in the report."""
    blank = raw.select(pl.all_horizontal(pl.exclude(_ROW).str.strip_chars().fill_null("") == "")).to_series()
    if not blank.any():
        return raw
    rows = raw.filter(blank)[_ROW]
    report.repairs.append(f"skipped {rows.len()} blank rows (no value in any column read) at rows {_listed_rows(rows)}")
    raw = raw.filter(~blank)
    if raw.height == 0:
        raise TraceError("empty trace: every data row is blank", source=report.source)
    return raw


def _listed_rows(rows: pl.Series) -> str:
    shown = ", ".join(str(r) for r in rows.head(_MAX_LISTED_ROWS).to_list())
    return shown + (", ..." if rows.len() > _MAX_LISTED_ROWS else "")


def _finish(
    columns: dict[str, pl.Series], rows: pl.Series, report: LoadReport, *, id_field: str | None = "request_id",
    prefix_field: str = "prefix_ids",
) -> pl.DataFrame:
    """Assemble the table in schema order, null-filling optional columns; check ids; sort and report.

    `columns` maps schema column -> parsed series; `id_field` is the source's
    name for its id column (for the duplicate-id message), None when ids are
    row numbers and so unique already.
    """
    df = pl.DataFrame({name: s.alias(name) for name, s in columns.items()}).with_columns(rows.alias(_ROW))
    df = df.with_columns(pl.lit(None, dtype).alias(c) for c, dtype in REQUEST_SCHEMA.items() if c not in columns)
    # columns already of their type are taken as they are (a cast of every column copies the whole table)
    df = df.select(*(pl.col(c) if df.schema[c] == t else pl.col(c).cast(t) for c, t in REQUEST_SCHEMA.items()), _ROW)
    if id_field:
        _check_unique(df, "request_id", report.source, row_col=_ROW, field=id_field)
    check_prefix_ids(df, report.source, row_col=_ROW, ids_field=prefix_field)
    arr = pl.col("arrival_s")
    late = df.filter(arr < arr.cum_max().shift(1))[_ROW]
    if late.len():
        df = df.sort("arrival_s", maintain_order=True)
        report.repairs.append(
            f"sorted {late.len()} out-of-order arrivals (at rows {_listed_rows(late)}); ties keep file order"
        )
    check_sessions(df, report.source, row_col=_ROW)  # in arrival order
    df = df.drop(_ROW)
    report.rows_loaded = df.height
    return df


def _read_public(path: str | os.PathLike, fmt: _Format) -> tuple[pl.DataFrame, LoadReport]:
    p, source = _source(path)
    found = _csv_header(p, source) if fmt.container == "csv" else list(_first_record(p, source))
    _require(found, fmt.required, fmt.name, source)
    with_ids = fmt.prefix_ids is not None and fmt.prefix_ids in found
    with_parents = fmt.parent is not None and fmt.parent in found
    optional = [c for c, on in ((fmt.prefix_ids, with_ids), (fmt.parent, with_parents)) if on]
    raw = _read(p, source, fmt.container, list(fmt.required) + optional)
    report = LoadReport(source=source, format=fmt.name, rows_read=raw.height)
    if fmt.container == "csv":
        raw = _drop_blank_rows(raw, report)

    output = _number(raw, fmt.output, source=source, integer=True, minimum=0 if fmt.failed_zero_output else 1)
    if fmt.failed_zero_output:
        failed = output == 0
        if failed.any():
            dropped = raw.filter(failed)[_ROW]
            report.repairs.append(
                f"dropped {dropped.len()} failed requests ({fmt.output} = 0) at rows {_listed_rows(dropped)}"
            )
            raw, output = raw.filter(~failed), output.filter(~failed)
            if raw.height == 0:
                raise TraceError(f"empty trace: all {dropped.len()} requests failed ({fmt.output} = 0)", source=source)

    if fmt.time_unit == "datetime":
        ns = _timestamp_ns(raw, fmt.time, source=source)
        if int(ns.max()) - int(ns.min()) >= 2**63:  # the Int64 difference below would wrap around
            _first_bad(raw, pl.lit(ns == ns.max()), fmt.time, "timestamps spanning less than 292 years", source,
                       row_col=_ROW)  # fmt: skip
        # numpy divides exactly rounded; polars' series / scalar multiplies by 1e-9 and can be an ulp off
        arrival = pl.Series(fmt.time, (ns - ns.min()).to_numpy() / 1e9)
    else:
        scale = 1e-3 if fmt.time_unit == "ms" else 1.0
        arrival = _number(raw, fmt.time, source=source, integer=False, minimum=0) * scale
    if fmt.request_id:
        ids = _number(raw, fmt.request_id, source=source, integer=True)
    else:
        ids = raw[_ROW].cast(pl.Int64) - 1
    tenant = (
        _text(raw, fmt.tenant, source=source, nullable=False, strip=True, report=report)
        if fmt.tenant
        else pl.repeat("default", raw.height, dtype=pl.String, eager=True)
    )
    columns = {
        "request_id": ids,
        "arrival_s": arrival,
        "tenant": tenant,
        "input_tokens": _number(raw, fmt.input, source=source, integer=True, minimum=1),
        "output_tokens": output,
    }
    if with_ids:
        ids = _id_lists(raw, fmt.prefix_ids, source=source, json=fmt.container == "jsonl")
        columns["prefix_ids"] = ids
        columns["prefix_block_tokens"] = pl.Series([fmt.prefix_block_tokens] * raw.height, dtype=pl.Int64).set(
            ids.is_null(), None)
    if with_parents:
        columns.update(_conversations(raw, columns["request_id"], arrival, fmt, source=source))
    return _finish(columns, raw[_ROW], report, id_field=fmt.request_id,
                   prefix_field=fmt.prefix_ids if with_ids else "prefix_ids"), report


def _conversations(raw: pl.DataFrame, ids: pl.Series, arrival: pl.Series, fmt: _Format, *,
                   source: str) -> dict[str, pl.Series]:
    """``session_id`` and ``turn`` from a parent-id column: a request's session is the first request of
    its chain of parents (or, where the chain leaves the file, the first missing parent's id), and only
    two or more requests of one chain in the file make a session (a lone request stays a plain one).
    A turn is the request's place in its session by arrival (ties: file order), so a conversation
    that branches (an answer regenerated) still has its turns in order."""
    parent = _number(raw, fmt.parent, source=source, integer=True, nullable=True)
    id_list = ids.to_list()
    up = {i: q for i, q in zip(id_list, parent.to_list()) if q is not None and q >= 0}
    root: dict[int, int] = {}
    for row, i in enumerate(id_list):
        chain = []
        while i not in root and i in up:
            chain.append(i)
            if len(chain) > len(up):
                bad = pl.Series([k == row for k in range(raw.height)])
                _first_bad(raw, pl.lit(bad), fmt.parent, "a parent id whose chain of parents ends "
                           "(this one leads back to itself)", source, row_col=_ROW)  # fmt: skip
            i = up[i]
        base = root.get(i, i)
        for c in chain:
            root[c] = base
        root.setdefault(i, base)
    keys = np.array([root[i] for i in id_list], dtype=np.int64)
    _, first, counts = np.unique(keys, return_inverse=True, return_counts=True)
    shared = counts[first] > 1
    order = np.lexsort((np.arange(keys.size), arrival.to_numpy(), keys))  # by session, then arrival, then row
    turn = np.empty(keys.size, dtype=np.int64)
    starts = np.r_[True, keys[order][1:] != keys[order][:-1]]
    run = np.arange(keys.size) - np.maximum.accumulate(np.where(starts, np.arange(keys.size), 0))
    turn[order] = run + 1
    session = pl.Series("session_id", keys, dtype=pl.Int64).set(pl.Series(~shared), None)
    return {"session_id": session, "turn": pl.Series("turn", turn, dtype=pl.Int64).set(pl.Series(~shared), None)}


# --------------------------------------------------------------------------- per-format readers


def read_azure(path: str | os.PathLike) -> tuple[pl.DataFrame, LoadReport]:
    """Azure LLM inference trace, 2023 or 2024 (`TIMESTAMP`, `ContextTokens`, `GeneratedTokens`).

    TIMESTAMP is wall clock, naive or UTC, with up to 9 fractional digits or
    none; arrival_s counts from the earliest one. No tenants: "default".
    """
    return _read_public(path, _AZURE)


def read_burstgpt(path: str | os.PathLike) -> tuple[pl.DataFrame, LoadReport]:
    """BurstGPT (`Timestamp` s from start, `Model`, `Request tokens`, `Response tokens`, ...).

    Tenant is the `Model` column. Rows with 0 response tokens are failed
    requests: they are dropped and listed in the report.
    """
    return _read_public(path, _BURSTGPT)


def read_mooncake(path: str | os.PathLike) -> tuple[pl.DataFrame, LoadReport]:
    """Mooncake JSONL (`timestamp` ms, `input_length`, `output_length`, optional `hash_ids`).

    `hash_ids` become the prefix identity (`prefix_ids`, 512 tokens each): the engine splits every
    512-token id into its own blocks (32 of 16 tokens), each keyed by the chain of ids up to it.
    """
    return _read_public(path, _MOONCAKE)


def read_bailian(path: str | os.PathLike) -> tuple[pl.DataFrame, LoadReport]:
    """Qwen Bailian JSONL (`chat_id` -> request_id, `timestamp` s, `input_length`, `output_length`,
    optional `parent_chat_id`, `turn`, `hash_ids`).

    `hash_ids` become the prefix identity (`prefix_ids`, 16 tokens each, the block size the
    released files are named by). `parent_chat_id` (-1: none) links a conversation's requests:
    two or more linked requests form a session (`session_id` = its first request's id, or the
    first missing parent's where the file starts mid-conversation; `turn` = place by arrival),
    so a turn is never sent before the previous turn's answer has finished (`think_s` is not in
    the trace: 0). `type` and `turn` are not read; tenant is "default".
    """
    return _read_public(path, _BAILIAN)


def read_vidur(path: str | os.PathLike) -> tuple[pl.DataFrame, LoadReport]:
    """Vidur replay CSV (`arrived_at` s, `num_prefill_tokens`, `num_decode_tokens`)."""
    return _read_public(path, _VIDUR)


# Per schema column of a native file: (integer?, minimum, strictly above?) for numbers.
_NATIVE_NUMBERS: dict[str, tuple[bool, float | None, bool]] = {
    "request_id": (True, None, False),
    "arrival_s": (False, 0, False),
    "input_tokens": (True, 1, False),
    "output_tokens": (True, 1, False),
    "max_tokens": (True, 1, False),
    "priority": (True, None, False),
    "slo_ttft_s": (False, 0, True),
    "slo_e2e_s": (False, 0, True),
    "prefix_block_tokens": (True, 1, False),
    "session_id": (True, None, False),
    "turn": (True, 1, False),
    "think_s": (False, 0, False),
}


def read_native(path: str | os.PathLike) -> tuple[pl.DataFrame, LoadReport]:
    """driftsim's own CSV or Parquet: the schema's columns by name; missing optional ones become null.

    Arrivals are kept as written (>= 0). Columns the schema lacks are ignored
    and named in the report.
    """
    p, source = _source(path)
    container = _container(p)
    if container == "jsonl":
        raise TraceError("the native format is CSV or Parquet, not JSON lines", source=source)
    if container == "csv":
        found = _csv_header(p, source)
    else:
        try:
            found = pl.scan_parquet(p).collect_schema().names()
        except (pl.exceptions.PolarsError, OSError) as e:
            raise TraceError(f"could not read the file as parquet: {e}", source=source) from e
    _require(found, REQUIRED_COLUMNS, "native", source)
    present = [c for c in REQUEST_SCHEMA if c in found]
    extra = [c for c in found if c not in REQUEST_SCHEMA]
    if container == "csv":
        raw = _read(p, source, container, present)
        report = LoadReport(source=source, format="native", rows_read=raw.height)
        raw = _drop_blank_rows(raw, report)
        parts = [(col, raw) for col in present]
    else:
        parts = _parquet_columns(p, source, present)
        first = next(parts)
        raw = first[1]
        report = LoadReport(source=source, format="native", rows_read=raw.height)
        parts = itertools.chain([first], parts)
        del first
    rows = raw[_ROW]
    del raw
    if extra:
        report.repairs.append(f"ignored {len(extra)} column(s) not in the request schema: {extra}")
    columns: dict[str, pl.Series] = {}
    for col, part in parts:
        columns[col] = _native_column(part, col, source, report)
        if columns[col].null_count() == len(rows) and col not in REQUIRED_COLUMNS:
            del columns[col]  # all null: _finish's typed null column takes no memory, a read one 8 bytes a row
    return _finish(columns, rows, report), report


#: From this many rows on, a Parquet trace is read one column at a time (see _parquet_columns).
_COLUMNWISE_ROWS = 200_000


def _parquet_columns(path: Path, source: str, columns: list[str]) -> Iterator[tuple[str, pl.DataFrame]]:
    """(column, frame holding it as read) for each of `columns`.

    NOTE: a large file is read one column at a time, so its columns are never all held as read beside
    the parsed ones (peak memory: the parsed table plus one column as read; at 1M requests about half
    of reading all). Each read costs about a millisecond however small the file, so one of fewer than
    _COLUMNWISE_ROWS rows (a few MB as read) is read in one go.
    """
    try:
        rows = pl.scan_parquet(path).select(pl.len()).collect().item()  # from the file's metadata
    except pl.exceptions.PolarsError as e:
        raise TraceError(f"could not read the file as parquet: {e}", source=source) from e
    for group in ([c] for c in columns) if rows >= _COLUMNWISE_ROWS else [columns]:
        raw = _read(path, source, "parquet", group)
        for col in group:
            yield col, raw


def _native_column(raw: pl.DataFrame, col: str, source: str, report: LoadReport) -> pl.Series:
    """One native column parsed to its schema type; `raw` holds it as read, with the row numbers."""
    required = col in REQUIRED_COLUMNS
    if col in _NATIVE_NUMBERS:
        integer, minimum, above = _NATIVE_NUMBERS[col]
        return _number(raw, col, source=source, integer=integer, minimum=minimum, strictly_above=above,
                       nullable=not required)  # fmt: skip
    if col == "prefix_ids":
        return _id_lists(raw, col, source=source)
    # Tenant names are identifiers (stripped); prompt text is kept byte for byte.
    return _text(raw, col, source=source, nullable=not required, strip=col == "tenant", report=report)


# --------------------------------------------------------------------------- benchmark documents (one JSON each)
# Formats whose file is one JSON document, not one record per line: a `vllm bench serve` result
# (vllm/benchmarks/serve.py, saved with --save-result --save-detailed), a GuideLLM benchmark report
# (guidellm/benchmark/benchmark.py: GenerativeBenchmark.requests) and ShareGPT conversations.


def _json_document(path: Path, source: str) -> object:
    _check_text(path, source)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise TraceError(f"not valid JSON at line {e.lineno} column {e.colno} ({e.msg})", source=source) from None
    except UnicodeDecodeError as e:
        raise TraceError(f"not UTF-8 text: {e.reason} at byte {e.start}", source=source) from None


def _per_request(doc: dict, key: str, n: int, source: str, *, required: bool = True) -> list | None:
    """One per-request list of a vllm bench result, checked for its length."""
    values = doc.get(key)
    if values is None:
        if required:
            raise TraceError(
                f"missing per-request list '{key}': save the result with `vllm bench serve --save-result"
                " --save-detailed`", source=source, field=key,
            )  # fmt: skip
        return None
    if not isinstance(values, list) or len(values) != n:
        got = f"{len(values)} values" if isinstance(values, list) else type(values).__name__
        raise TraceError(f"expected a list of {n} values (one per request, as input_lens), got {got}",
                         source=source, field=key)  # fmt: skip
    return values


def _int_column(values: list, name: str, source: str, *, minimum: int) -> pl.Series:
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise TraceError(f"expected an integer >= {minimum}, got {v!r}", source=source, row=i + 1, field=name)
    return pl.Series(name, values, dtype=pl.Int64)


def _bench_arrivals(doc: dict, n: int, source: str, report: LoadReport) -> pl.Series:
    """Send times: the saved `start_times` from the first; else drawn as vLLM draws them from the rate."""
    starts = _per_request(doc, "start_times", n, source, required=False)
    if starts is not None:
        for i, v in enumerate(starts):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise TraceError(f"expected a number, got {v!r}", source=source, row=i + 1, field="start_times")
        t = np.asarray(starts, dtype=float)
        return pl.Series("arrival_s", t - t.min())
    rate = doc.get("request_rate", "inf")
    rate = math.inf if rate in ("inf", None) else float(rate)
    burstiness = float(doc.get("burstiness") or 1.0)
    report.repairs.append(
        f"no start_times saved: send times drawn as vllm bench serve draws them (request_rate {rate},"
        f" burstiness {burstiness}, seed 0)"
    )
    return pl.Series("arrival_s", arrival_times(n, rate, burstiness, np.random.default_rng(0)))


def _keep_ok(columns: dict[str, pl.Series], ok: np.ndarray, what: str, report: LoadReport) -> dict[str, pl.Series]:
    """Drop the requests that failed (listed by row) and keep the rest."""
    if ok.all():
        return columns
    rows = pl.Series(np.flatnonzero(~ok) + 1)
    report.repairs.append(f"dropped {rows.len()} {what} at rows {_listed_rows(rows)}")
    mask = pl.Series(ok)
    return {k: s.filter(mask) for k, s in columns.items()}


def _document_table(columns: dict[str, pl.Series], report: LoadReport, source: str) -> pl.DataFrame:
    if columns["request_id"].len() == 0:
        raise TraceError("empty trace: no successful requests", source=source)
    return _finish(columns, columns["request_id"] + 1, report, id_field=None)


def read_vllm_bench(path: str | os.PathLike) -> tuple[pl.DataFrame, LoadReport]:
    """A `vllm bench serve` result JSON saved with ``--save-detailed`` (``input_lens``, ``output_lens``, ...).

    Request ``i`` is the i-th entry of the per-request lists; arrivals are
    the saved ``start_times`` counted from the first, else drawn from the
    saved ``request_rate`` and ``burstiness`` as vLLM draws them (seed 0,
    said in the report). Failed requests (a non-empty ``errors`` entry or 0
    output tokens) are dropped and listed. The measured latencies are read by
    :func:`read_vllm_bench_latencies`.
    """
    p, source = _source(path)
    doc = _json_document(p, source)
    if not isinstance(doc, dict):
        raise TraceError(f"expected a JSON object (a vllm bench serve result), got {type(doc).__name__}", source=source)
    if not isinstance(doc.get("input_lens"), list):
        hint = " (saved without --save-detailed?)" if "request_throughput" in doc else ""
        raise TraceError(f"expected a per-request list 'input_lens'{hint}: save the result with"
                         " `vllm bench serve --save-result --save-detailed`", source=source, field="input_lens")  # fmt: skip
    n = len(doc["input_lens"])
    report = LoadReport(source=source, format="vllm-bench", rows_read=n)
    outputs = _per_request(doc, "output_lens", n, source)
    errors = _per_request(doc, "errors", n, source, required=False) or [""] * n
    ok = np.array([not e and isinstance(o, int) and o > 0 for e, o in zip(errors, outputs)], dtype=bool)
    columns = {
        "request_id": pl.Series("request_id", np.arange(n, dtype=np.int64)),
        "arrival_s": _bench_arrivals(doc, n, source, report),
        "tenant": pl.repeat("default", n, dtype=pl.String, eager=True),
        "input_tokens": _int_column(doc["input_lens"], "input_lens", source, minimum=1),
        "output_tokens": pl.Series("output_tokens", [o if k else 1 for o, k in zip(outputs, ok)], dtype=pl.Int64),
    }
    _int_column([o for o, k in zip(outputs, ok) if k], "output_lens", source, minimum=1)
    return _document_table(_keep_ok(columns, ok, "failed requests (errors or 0 output tokens)", report), report,
                           source), report  # fmt: skip


def read_vllm_bench_latencies(path: str | os.PathLike) -> pl.DataFrame:
    """The latencies a `vllm bench serve` result measured, per successful request (seconds).

    Columns: ``request_id`` (as :func:`read_vllm_bench` numbers them),
    ``ttft_s``, ``e2e_s`` (``latencies``), ``itl_mean_s`` and ``itl_max_s``
    (from each request's ``itls``; null with one token). Null where a list
    was not saved.
    """
    p, source = _source(path)
    doc = _json_document(p, source)
    table, _ = read_vllm_bench(path)
    n = len(doc["input_lens"])
    ids = table["request_id"].to_list()
    pick = lambda key: [None if v is None else v[i] for i in ids] if (v := _per_request(doc, key, n, source,  # noqa: E731
                                                                                       required=False)) else [None] * len(ids)  # fmt: skip
    itls = pick("itls")
    return pl.DataFrame({
        "request_id": table["request_id"],
        "ttft_s": pl.Series(pick("ttfts"), dtype=pl.Float64),
        "e2e_s": pl.Series(pick("latencies"), dtype=pl.Float64),
        "itl_mean_s": pl.Series([float(np.mean(g)) if g else None for g in itls], dtype=pl.Float64),
        "itl_max_s": pl.Series([float(np.max(g)) if g else None for g in itls], dtype=pl.Float64),
    })  # fmt: skip


def read_guidellm(path: str | os.PathLike) -> tuple[pl.DataFrame, LoadReport]:
    """A GuideLLM benchmark report (``benchmarks[].requests.successful[]``: ``prompt_tokens``, ``output_tokens``,
    ``start_time``).

    Every benchmark's successful requests, in send order; arrivals count
    from the earliest ``start_time``; tenant is the benchmark's index
    (``benchmark-0``, ...), as each ran at its own rate. Errored and
    incomplete requests are not read and are counted in the report.
    """
    p, source = _source(path)
    doc = _json_document(p, source)
    benches = doc.get("benchmarks") if isinstance(doc, dict) else None
    if not isinstance(benches, list) or not benches:
        raise TraceError("expected a GuideLLM report: an object with a non-empty 'benchmarks' list", source=source,
                         field="benchmarks")  # fmt: skip
    recs, tenants, skipped = [], [], 0
    for b, bench in enumerate(benches):
        requests = bench.get("requests") if isinstance(bench, dict) else None
        if not isinstance(requests, dict) or not isinstance(requests.get("successful"), list):
            raise TraceError("expected 'requests.successful', a list", source=source, row=b + 1, field="benchmarks")
        recs += requests["successful"]
        tenants += [f"benchmark-{b}"] * len(requests["successful"])
        skipped += sum(len(requests.get(k) or []) for k in ("errored", "incomplete"))
    report = LoadReport(source=source, format="guidellm", rows_read=len(recs))
    if skipped:
        report.repairs.append(f"not read: {skipped} errored or incomplete requests (only successful ones are)")
    for field_name in ("prompt_tokens", "output_tokens", "start_time"):
        for i, r in enumerate(recs):
            v = r.get(field_name) if isinstance(r, dict) else None
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise TraceError(f"expected a number, got {v!r}", source=source, row=i + 1, field=field_name)
    starts = np.array([r["start_time"] for r in recs], dtype=float)
    columns = {
        "request_id": pl.Series("request_id", np.arange(len(recs), dtype=np.int64)),
        "arrival_s": pl.Series("arrival_s", starts - (starts.min() if len(recs) else 0.0)),
        "tenant": pl.Series("tenant", tenants, dtype=pl.String),
        "input_tokens": _int_column([r["prompt_tokens"] for r in recs], "prompt_tokens", source, minimum=1),
        "output_tokens": _int_column([r["output_tokens"] for r in recs], "output_tokens", source, minimum=1),
    }
    return _document_table(columns, report, source), report


def read_sharegpt(path: str | os.PathLike, counter: TokenCounter | None = None) -> tuple[pl.DataFrame, LoadReport]:
    """ShareGPT conversations (a JSON list of ``{"conversations": [{"from", "value"}, ...]}``), as vLLM reads them.

    As ``vllm/benchmarks/datasets/datasets.py:ShareGPTDataset``: the prompt is
    the first turn, the output the second; conversations with fewer than two
    turns or an empty turn are dropped and listed. Lengths are counted by
    ``counter`` (default: whitespace words, :mod:`driftsim.traces.tokens`);
    the prompt text is kept. ShareGPT has no send times: every request
    arrives at t = 0 (as ``--request-rate inf``), said in the report; give
    them a rate with :func:`driftsim.traces.bench_workload.with_arrivals`.
    """
    p, source = _source(path)
    doc = _json_document(p, source)
    if not isinstance(doc, list):
        raise TraceError(f"expected a JSON list of conversations, got {type(doc).__name__}", source=source)
    counter = counter or WhitespaceCounter()
    prompts, ins, outs, ok = [], [], [], []
    for i, conv in enumerate(doc):
        turns = conv.get("conversations") if isinstance(conv, dict) else None
        if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
            raise TraceError("expected 'conversations', a list of {from, value} turns", source=source, row=i + 1,
                             field="conversations")  # fmt: skip
        pair = [str(t.get("value") or "") for t in turns[:2]]
        n_in, n_out = (counter.count(pair[0]), counter.count(pair[1])) if len(pair) == 2 else (0, 0)
        prompts.append(pair[0] if pair else None)
        ins.append(max(n_in, 1))
        outs.append(max(n_out, 1))
        ok.append(n_in > 0 and n_out > 0)
    report = LoadReport(source=source, format="sharegpt", rows_read=len(doc))
    report.repairs.append("no send times in ShareGPT: every request arrives at t = 0 (as --request-rate inf)")
    n = len(doc)
    columns = {
        "request_id": pl.Series("request_id", np.arange(n, dtype=np.int64)),
        "arrival_s": pl.Series("arrival_s", np.zeros(n)),
        "tenant": pl.repeat("default", n, dtype=pl.String, eager=True),
        "input_tokens": pl.Series("input_tokens", ins, dtype=pl.Int64),
        "output_tokens": pl.Series("output_tokens", outs, dtype=pl.Int64),
        "prompt": pl.Series("prompt", prompts, dtype=pl.String),
    }
    columns = _keep_ok(columns, np.array(ok, dtype=bool), "conversations with fewer than two non-empty turns", report)
    return _document_table(columns, report, source), report


def _document_format(path: Path) -> str | None:
    """The format of a file that is one JSON document, by its first bytes; None for other files."""
    with open(path, "rb") as f:
        head = f.read(_SNIFF_BYTES).lstrip()
    if head.startswith(b"["):
        return "sharegpt"
    if not head.startswith(b"{"):
        return None
    if b'"benchmarks"' in head:
        return "guidellm"
    if any(k in head for k in (b'"input_lens"', b'"request_throughput"', b'"burstiness"')):
        return "vllm-bench"
    return None


# --------------------------------------------------------------------------- detection and entry points

#: format name -> reader. A reader is a pure function from a path to (table, report).
FORMATS: dict[str, Callable[[str | os.PathLike], tuple[pl.DataFrame, LoadReport]]] = {
    "azure": read_azure,
    "burstgpt": read_burstgpt,
    "mooncake": read_mooncake,
    "bailian": read_bailian,
    "vidur": read_vidur,
    "native": read_native,
    "vllm-bench": read_vllm_bench,
    "guidellm": read_guidellm,
    "sharegpt": read_sharegpt,
}

_EXTENSIONS = {
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}


def _container(path: Path) -> str:
    """csv, jsonl or parquet: by extension when it is a known one, else by the first bytes."""
    by_ext = _EXTENSIONS.get(path.suffix.lower())
    if by_ext:
        return by_ext
    with open(path, "rb") as f:
        head = f.read(4096)
    if head.startswith(b"PAR1"):
        return "parquet"
    return "jsonl" if head.lstrip().startswith(b"{") else "csv"


def detect_format(path: str | os.PathLike) -> str:
    """Name the format of a trace file from its extension and header (CSV) or first record (JSONL).

    The format whose columns best match wins; a format with all its required
    columns beats one without, so a near miss still gets the loader whose
    "missing column" error is most useful.
    """
    p, source = _source(path)
    container = _container(p)
    if container == "parquet":
        return "native"
    if container == "jsonl":
        _check_text(p, source)
        document = _document_format(p)
        if document:
            return document
    found = _csv_header(p, source) if container == "csv" else list(_first_record(p, source))
    candidates = [(f.name, f.required, f.hints) for f in _PUBLIC.values() if f.container == container]
    if container == "csv":
        candidates.append(("native", REQUIRED_COLUMNS, OPTIONAL_COLUMNS))
    scored = []
    for name, required, hints in candidates:
        overlap = len(set(found) & set(required + hints))
        scored.append((all(c in found for c in required), overlap, name))
    _, overlap, name = max(scored, key=lambda t: (t[0], t[1]))
    if overlap == 0:
        raise TraceError(
            f"unknown trace format ({container} with columns {found}); expected one of: {_describe_formats()}",
            source=source,
        )
    return name


def load_trace_with_report(path: str | os.PathLike, format: str = "auto") -> tuple[pl.DataFrame, LoadReport]:
    """Load any supported trace into the request table, with the report of repairs made on the way."""
    name = detect_format(path) if format == "auto" else format
    reader = FORMATS.get(name)
    if reader is None:
        raise TraceError(f"unknown trace format {format!r}; expected one of {['auto', *FORMATS]}", source=str(path))
    return reader(path)


def load_trace(path: str | os.PathLike, format: str = "auto") -> pl.DataFrame:
    """Load any supported trace into the request table (REQUEST_SCHEMA columns, order and dtypes)."""
    return load_trace_with_report(path, format)[0]

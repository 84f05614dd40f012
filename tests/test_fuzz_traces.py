"""Fuzz and property tests for every trace loader: hostile files end in a valid table or a named TraceError.

For each format (Azure, BurstGPT, Mooncake, Bailian, Vidur, native CSV and
Parquet) hypothesis builds a valid file, then breaks it: hostile cell values
(NaN, inf, huge, negative, unicode digits, JSON where a number goes), missing
and extra cells and columns, duplicate ids, unicode tenant names, BOMs, CRLF,
blank lines, truncation at any byte, random bytes spliced in, the records
written in the other container (a CSV that is really JSON lines and the
reverse), and pure garbage. The property, for every input:

* either ``load_trace_with_report`` returns a table that passes
  ``validate_trace`` and whose report accounts for every row
  (``rows_read == rows_loaded + rows dropped/skipped as listed``; where the
  number of records written is known, ``rows_read`` equals it),
* or it raises ``TraceError`` whose message names the file (and, for a bad
  cell, the row and field);
* never another exception, never a hang.

Round trips: the same generated records written in each format load back to
the table an independent reference computes from them. Exactness: timestamps
of any year 1..9999 load to exactly the seconds Python computes or are
refused by row and field (never wrapped around); integers written as "N",
"N.0" or " N " load as exactly N or are refused (never rounded); Parquet
columns of any type load or name the column.

Budget: see tests/fuzzing.py (CI: short and derandomized; long:
``DRIFTSIM_FUZZ_EXAMPLES=5000 pytest -m fuzz``).
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.factories import draw_native_table
from tests.fuzzing import fuzz_settings, no_hang, tried
from driftsim.traces import REQUEST_SCHEMA, TraceError, load_trace_with_report, validate_trace, write_trace

pytestmark = pytest.mark.fuzz

# --------------------------------------------------------------------------- formats as records

# Per format: container, columns in file order, and how to build the expected table (reference).
FORMATS = {
    "azure": ("csv", ["TIMESTAMP", "ContextTokens", "GeneratedTokens"]),
    "burstgpt": ("csv", ["Timestamp", "Model", "Request tokens", "Response tokens", "Total tokens", "Log Type"]),
    "mooncake": ("jsonl", ["timestamp", "input_length", "output_length", "hash_ids"]),
    "bailian": ("jsonl", ["chat_id", "parent_chat_id", "timestamp", "input_length", "output_length", "type", "turn"]),
    "vidur": ("csv", ["arrived_at", "num_prefill_tokens", "num_decode_tokens", "num_total_tokens"]),
    "native": ("csv", list(REQUEST_SCHEMA)),
    "parquet": ("parquet", list(REQUEST_SCHEMA)),
}
EXT = {"csv": ".csv", "jsonl": ".jsonl", "parquet": ".parquet"}
_counter = itertools.count()

tokens = st.integers(1, 2**31)
int64 = st.integers(-(2**63), 2**63 - 1)
# Tenant names: any unicode but surrogates and control characters, stripped as the loaders strip them.
tenant_names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=12).filter(
    lambda s: s.strip() == s and s != ""
)
seconds = st.floats(0, 1e7, allow_nan=False, allow_infinity=False)
EPOCH_2023 = datetime(2023, 11, 16, tzinfo=timezone.utc)


@st.composite
def azure_time(draw, anchor: datetime) -> tuple[str, int]:
    """A timestamp in one of Azure's spellings within a week after `anchor`, and its nanoseconds since it."""
    us = draw(st.integers(0, 7 * 86400 * 10**6))
    t = anchor + timedelta(microseconds=us)
    digits = draw(st.sampled_from([0, 3, 6, 7, 9]))
    frac_ns = (us % 10**6) * 1000
    frac = f"{frac_ns:09d}"[:digits] if digits else ""
    kept_ns = int(frac.ljust(9, "0")) if frac else 0
    text = t.strftime("%Y-%m-%d %H:%M:%S") + (f".{frac}" if frac else "")
    text += draw(st.sampled_from(["", "+00:00", "Z"]))
    return text, (us // 10**6) * 10**9 + kept_ns


@st.composite
def records(draw, fmt: str) -> tuple[list[dict], pl.DataFrame]:
    """Valid source records for `fmt` (dicts of Python values) and the request table they must load to."""
    n = draw(st.integers(1, 8))
    if fmt in ("native", "parquet"):
        df = draw(native_tables(n))
        return df.to_dicts(), df
    recs, expect = [], []
    ids = draw(st.lists(st.integers(-(2**62), 2**62), min_size=n, max_size=n, unique=True))
    # Mostly Azure's own dates; sometimes anywhere nanoseconds since 1970 fit 64 bits (1678..2261).
    years = st.just(2023) | st.integers(1678, 2260)
    anchor = EPOCH_2023.replace(year=draw(years), month=draw(st.integers(1, 12)), day=draw(st.integers(1, 28)))
    for i in range(n):
        inp, out = draw(tokens), draw(tokens)
        if fmt == "azure":
            text, ns = draw(azure_time(anchor))
            recs.append({"TIMESTAMP": text, "ContextTokens": inp, "GeneratedTokens": out})
            expect.append((i, ns, "default", inp, out))
        elif fmt == "burstgpt":
            out = draw(st.integers(0, 5)) if draw(st.booleans()) else out  # 0 = a failed request, dropped
            t, model = draw(seconds), draw(tenant_names)
            log = draw(st.sampled_from(["Conversation log", "API log"]))
            recs.append({"Timestamp": t, "Model": model, "Request tokens": inp, "Response tokens": out,
                         "Total tokens": inp + out, "Log Type": log})  # fmt: skip
            if out:
                expect.append((i, t, model, inp, out))
        elif fmt == "mooncake":
            ms = draw(st.integers(0, 10**10))
            hash_ids = [i * 10**6 + m for m in range(-(-inp // 512))]  # one id per 512 tokens, as the trace has
            recs.append({"timestamp": ms, "input_length": inp, "output_length": out, "hash_ids": hash_ids})
            expect.append((i, ms * 1e-3, "default", inp, out, hash_ids, 512))
        elif fmt == "bailian":
            t = draw(seconds)
            recs.append({"chat_id": ids[i], "parent_chat_id": -1, "timestamp": t, "input_length": inp,
                         "output_length": out, "type": "text", "turn": 1})  # fmt: skip
            expect.append((ids[i], t, "default", inp, out))
        elif fmt == "vidur":
            t = draw(seconds)
            recs.append({"arrived_at": t, "num_prefill_tokens": inp, "num_decode_tokens": out,
                         "num_total_tokens": inp + out})  # fmt: skip
            expect.append((i, t, "default", inp, out))
    if fmt == "azure":
        first = min(e[1] for e in expect)
        expect = [(i, (ns - first) / 1e9, *rest) for i, ns, *rest in expect]
    expect.sort(key=lambda e: e[1])  # stable: ties keep file order
    given = ["request_id", "arrival_s", "tenant", "input_tokens", "output_tokens", "prefix_ids", "prefix_block_tokens"]
    table = pl.DataFrame(
        [dict(zip(given, e if len(e) == 7 else (*e, None, None))) for e in expect],
        schema={c: REQUEST_SCHEMA[c] for c in given},
    ).with_columns(pl.lit(None, t).alias(c) for c, t in REQUEST_SCHEMA.items() if c not in given)
    return recs, table.select(list(REQUEST_SCHEMA))


@st.composite
def native_tables(draw, n: int) -> pl.DataFrame:
    return draw_native_table(draw, n, seconds=seconds, tenant_names=tenant_names, tokens=tokens)


# --------------------------------------------------------------------------- serialising


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return str(v)


def to_csv(recs: list[dict], columns: list[str]) -> bytes:
    """Records as CSV; a record may lack a column (a short row) or carry extra values (a ragged row)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in recs:
        row = [_cell(r[c]) for c in columns if c in r]
        row += [_cell(v) for k, v in r.items() if k not in columns]
        w.writerow(row)
    return buf.getvalue().encode()


def to_jsonl(recs: list[dict], columns: list[str]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs).encode()


def write_file(directory: Path, fmt: str, recs: list[dict], *, container: str | None = None) -> Path:
    """Write `recs` as `fmt` would store them; `container` forces a different content (JSON in a .csv, ...)."""
    kind, columns = FORMATS[fmt]
    path = directory / f"f{next(_counter)}{EXT[kind]}"
    content = container or kind
    if content == "parquet":
        pl.DataFrame(recs, schema=REQUEST_SCHEMA if fmt in ("native", "parquet") else None).write_parquet(path)
    else:
        path.write_bytes(to_csv(recs, columns) if content == "csv" else to_jsonl(recs, columns))
    return path


# --------------------------------------------------------------------------- the property

_DROPS = re.compile(r"^(?:dropped|skipped) (\d+) ")


def check_load(path: Path, fmt: str, *, n_records: int | None = None, cell: tuple[int, str] | None = None) -> str:
    """Load `path`; assert the outcome is a valid, fully accounted table or a TraceError naming the file.

    `n_records`: how many data records the file holds, when the test knows.
    `cell`: (row, column) of the one value the test broke: an error must then name a row or a field.
    Returns "loaded" or "error" for the outcome counts.
    """
    format_arg = "native" if fmt == "parquet" else fmt
    try:
        with no_hang():
            df, report = load_trace_with_report(path, format_arg)
    except TraceError as e:
        msg = str(e)
        assert e.source == str(path) and msg.startswith(str(path)), f"error does not name the file: {msg!r}"
        assert len(msg) > len(str(path)) + 10, f"error says too little: {msg!r}"
        if cell is not None:  # a bad cell is named by row or field; a whole-file consequence names the column
            named = e.row is not None or e.field is not None or "line " in msg or cell[1] in msg
            assert named or "empty trace" in msg, f"no row or field named: {msg!r}"
        return "error"
    validate_trace(df, source=str(path))
    assert report.rows_loaded == df.height
    dropped = sum(int(m.group(1)) for r in report.repairs if (m := _DROPS.match(r)))
    assert report.rows_read - report.rows_loaded == dropped, f"rows unaccounted for: {report}"
    if n_records is not None:
        assert report.rows_read == n_records, f"{n_records} records written, {report.rows_read} read: {report}"
    return "loaded"


# --------------------------------------------------------------------------- mutations

HOSTILE_TEXT = [
    "", " ", "NaN", "nan", "-nan", "inf", "-inf", "Infinity", "1e400", "-1e400", "-1", "-0", "0", "-0.0", "1.5",
    "12.0", "1e3", "0x10", "1_000", "+7", " 42 ", "９", "٣", "9" * 25, "-" + "9" * 25, str(2**63), str(-(2**63) - 1),
    "9007199254740993.0", "true", "null", "[1, 2]", '{"a": 1}', "2023-11-16", "2023-02-30 00:00:00",
    "9999-12-31 23:59:59", "1000-01-01 00:00:00", "2023-11-16 25:00:00", "2023-11-16 18:17:03.١٢", "\u200b",
    "ünïcødé", "名前", "🙂", "a\nb", 'x"y', "x,y", "\r", "\t", "x" * 3000,
]  # fmt: skip
HOSTILE_JSON = [None, True, False, [], [1], {}, {"a": 1}, float("nan"), float("inf"), -1, 0, 2**64, -(2**70), 1.5, ""]


@st.composite
def broken_records(draw, fmt: str):
    """Valid records with one record-level defect; returns (records, (row, column) or None, note)."""
    recs, _ = draw(records(fmt))
    recs = [dict(r) for r in recs]
    container, columns = FORMATS[fmt]
    row = draw(st.integers(0, len(recs) - 1))
    col = draw(st.sampled_from(columns))
    kind = draw(st.sampled_from(["value", "value", "value", "delete", "extra", "duplicate_id", "negative_time"]))
    if kind == "value":
        pool = HOSTILE_TEXT + (HOSTILE_JSON if container == "jsonl" else [])
        recs[row][col] = draw(st.sampled_from(pool) | st.text(max_size=10) | st.integers() | st.floats())
        return recs, (row + 1, col), kind
    if kind == "delete":
        recs[row].pop(col, None)
        return recs, (row + 1, col), kind
    if kind == "extra":
        recs[row]["zz_extra"] = draw(st.sampled_from(HOSTILE_TEXT))
        return recs, None, kind
    if kind == "duplicate_id" and len(recs) > 1:
        id_col = {"bailian": "chat_id", "native": "request_id", "parquet": "request_id"}.get(fmt)
        if id_col:
            recs[row][id_col] = recs[(row + 1) % len(recs)][id_col]
            return recs, (row + 1, id_col), kind
    time_col = {"azure": "TIMESTAMP", "burstgpt": "Timestamp", "mooncake": "timestamp", "bailian": "timestamp",
                "vidur": "arrived_at"}.get(fmt, "arrival_s")  # fmt: skip
    recs[row][time_col] = draw(st.sampled_from([-1, -0.5, -1e300, "-1", "1969-12-31 23:59:59"]))
    return recs, (row + 1, time_col), "negative_time"


def corrupt_bytes(draw, data: bytes) -> tuple[bytes, str, int]:
    """One file-level defect; returns (bytes, note, extra blank records added or -1 when unknown)."""
    kind = draw(st.sampled_from(["bom", "crlf", "blank_lines", "truncate", "splice", "drop_header", "header_only",
                                 "empty", "rename_column"]))  # fmt: skip
    if kind == "bom":
        return b"\xef\xbb\xbf" + data, kind, 0
    if kind == "crlf":
        return data.replace(b"\n", b"\r\n"), kind, 0
    if kind == "blank_lines":
        lines = data.split(b"\n")
        at = draw(st.integers(1, max(1, len(lines) - 1)))
        k = draw(st.integers(1, 3))
        return b"\n".join(lines[:at] + [b""] * k + lines[at:]), kind, -1
    if kind == "truncate":
        return data[: draw(st.integers(0, max(0, len(data) - 1)))], kind, -1
    if kind == "splice":
        at = draw(st.integers(0, len(data)))
        return data[:at] + draw(st.binary(min_size=1, max_size=16)) + data[at:], kind, -1
    if kind == "drop_header":
        return data.split(b"\n", 1)[-1], kind, -1
    if kind == "header_only":
        return data.split(b"\n", 1)[0] + b"\n", kind, -1
    if kind == "empty":
        return b"", kind, -1
    head, _, rest = data.partition(b"\n")
    return head.replace(b"_", b"-", 1).replace(b"t", b"T", 1) + b"\n" + rest, kind, -1


# --------------------------------------------------------------------------- the fuzz targets

ALL = list(FORMATS)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.mark.parametrize("fmt", ALL)
@fuzz_settings()
@given(data=st.data())
def test_broken_records_end_in_a_table_or_a_named_error(workdir, fmt, data):
    recs, cell, note = data.draw(broken_records(fmt))
    if fmt == "parquet":
        # A typed file: a hostile value must fit the column's type, so break the table by casting loosely.
        recs = [{k: v for k, v in r.items() if k in REQUEST_SCHEMA} for r in recs]
        try:
            path = workdir / f"f{next(_counter)}.parquet"
            pl.DataFrame(recs, strict=False, infer_schema_length=None).write_parquet(path)
        except (pl.exceptions.PolarsError, TypeError, ValueError, OverflowError):
            tried(f"records:{fmt}", "unwritable")
            return
    else:
        path = write_file(workdir, fmt, recs)
    outcome = check_load(path, fmt, n_records=len(recs), cell=cell)
    tried(f"records:{fmt}", outcome)
    path.unlink()


@pytest.mark.parametrize("fmt", [f for f in ALL if f != "parquet"])
@fuzz_settings()
@given(data=st.data())
def test_broken_files_end_in_a_table_or_a_named_error(workdir, fmt, data):
    recs, _ = data.draw(records(fmt))
    container, columns = FORMATS[fmt]
    raw = to_csv(recs, columns) if container == "csv" else to_jsonl(recs, columns)
    broken, note, extra = corrupt_bytes(data.draw, raw)
    path = workdir / f"f{next(_counter)}{EXT[container]}"
    path.write_bytes(broken)
    known = len(recs) if extra == 0 else None
    tried(f"files:{fmt}", check_load(path, data.draw(st.sampled_from([fmt, "auto"])), n_records=known))
    path.unlink()


@pytest.mark.parametrize("fmt", ALL)
@fuzz_settings()
@given(data=st.data())
def test_the_other_container_is_a_named_error(workdir, fmt, data):
    """A CSV that is really JSON lines, JSON lines that are CSV, Parquet bytes under a text name, and back."""
    recs, _ = data.draw(records(fmt))
    container = FORMATS[fmt][0]
    other = data.draw(st.sampled_from([c for c in ("csv", "jsonl", "parquet") if c != container]))
    path = workdir / f"f{next(_counter)}{EXT[container]}"
    if other == "parquet":
        write_trace(data.draw(native_tables(len(recs))), path.with_suffix(".parquet"))
        path.with_suffix(".parquet").rename(path)
    else:
        path.write_bytes(to_csv(recs, FORMATS[fmt][1]) if other == "csv" else to_jsonl(recs, FORMATS[fmt][1]))
    outcome = check_load(path, data.draw(st.sampled_from([fmt, "auto"])))
    tried(f"container:{fmt}", outcome)
    assert outcome == "error", f"{other} content loaded as {fmt}"
    path.unlink()


@pytest.mark.parametrize("ext", [".csv", ".jsonl", ".json", ".parquet", ".txt", ""])
@fuzz_settings()
@given(blob=st.binary(max_size=512) | st.text(max_size=200).map(str.encode))
def test_garbage_is_a_named_error(workdir, ext, blob):
    path = workdir / f"g{next(_counter)}{ext}"
    path.write_bytes(blob)
    tried(f"garbage:{ext or 'no-ext'}", check_load(path, "auto"))
    path.unlink()


@pytest.mark.parametrize("fmt", ALL)
@fuzz_settings()
@given(data=st.data())
def test_round_trip_matches_the_reference(workdir, fmt, data):
    """Valid records load to exactly the table a plain-Python reference computes (sorting, drops, ids)."""
    recs, expected = data.draw(records(fmt))
    extra_crlf = FORMATS[fmt][0] != "parquet" and data.draw(st.booleans())
    if fmt == "native" or fmt == "parquet":
        path = write_trace(expected, workdir / f"f{next(_counter)}{EXT[FORMATS[fmt][0]]}")
    else:
        path = write_file(workdir, fmt, recs)
    if extra_crlf:
        path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
    if expected.height == 0:  # every BurstGPT request failed
        assert check_load(path, fmt) == "error"
        tried(f"roundtrip:{fmt}", "error")
        return
    with no_hang():
        df, report = load_trace_with_report(path, "native" if fmt == "parquet" else fmt)
    assert report.rows_read == len(recs) and report.rows_loaded == expected.height
    if fmt == "native" and extra_crlf:
        # CRLF inside quoted prompt text is the file's text: compare every other column exactly
        df, expected = df.drop("prompt"), expected.drop("prompt")
    assert df.equals(expected), f"{report}\n{df}\n{expected}"
    tried(f"roundtrip:{fmt}", "equal")
    path.unlink()


@fuzz_settings()
@given(
    times=st.lists(st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31)), min_size=1, max_size=4),
    digits=st.sampled_from([0, 6]),
)
def test_timestamps_of_any_year_load_exactly_or_are_refused(workdir, times, digits):
    """Arrivals are exactly the (ns since the first) / 1e9 Python computes, or the row and field are named."""
    spell = "%Y-%m-%d %H:%M:%S" + (".%f" if digits else "")
    times = times if digits else [t.replace(microsecond=0) for t in times]
    path = workdir / f"t{next(_counter)}.csv"
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + "".join(f"{t.strftime(spell)},1,1\n" for t in times))
    try:
        with no_hang():
            df = load_trace_with_report(path, "azure")[0]
    except TraceError as e:
        assert (e.row, e.field) != (None, None) or "span" in str(e), str(e)
        assert any(t.year < 1678 or t.year > 2261 for t in times) or "span" in str(e), str(e)
        tried("timestamps:any-year", "error")
        return
    epoch = datetime(1970, 1, 1)
    ns = [((t - epoch) // timedelta(microseconds=1)) * 1000 for t in times]
    assert df["arrival_s"].to_list() == sorted((x - min(ns)) / 1e9 for x in ns)
    tried("timestamps:any-year", "loaded")


@fuzz_settings()
@given(
    ids=st.lists(int64 | st.integers(2**53 - 3, 2**53 + 3) | st.integers(-(2**53) - 3, -(2**53) + 3), min_size=1,
                 max_size=4, unique=True),  # fmt: skip
    spelling=st.sampled_from(["{}", "{}.0", "{}.00", " {} "]),
)
def test_integers_written_any_way_load_exactly_or_are_refused(workdir, ids, spelling):
    """An id written as "N", "N.0" or " N " loads as exactly N, or is refused by row and field (never rounded)."""
    path = workdir / f"i{next(_counter)}.csv"
    rows = "".join(f"{spelling.format(i)},0,t,1,1\n" for i in ids)
    path.write_text("request_id,arrival_s,tenant,input_tokens,output_tokens\n" + rows)
    try:
        with no_hang():
            df = load_trace_with_report(path, "native")[0]
    except TraceError as e:
        assert e.field == "request_id" and e.row is not None, str(e)
        assert "." in spelling and any(abs(i) >= 2**53 for i in ids), str(e)
        tried("integers:spellings", "error")
        return
    assert df["request_id"].to_list() == ids
    tried("integers:spellings", "loaded")


ODD_DTYPES = [pl.Boolean, pl.UInt64, pl.Int8, pl.UInt8, pl.Float32, pl.Decimal(38, 4), pl.Date, pl.Datetime("us"),
              pl.Duration("ms"), pl.List(pl.Int64), pl.Binary, pl.Null, pl.Categorical, pl.String, pl.Float64,
              pl.Int64, pl.Struct({"a": pl.Int64})]  # fmt: skip


@fuzz_settings()
@given(data=st.data())
def test_parquet_columns_of_any_type_end_in_a_table_or_a_named_error(workdir, data):
    """A typed file whose columns have the wrong types (or the right ones): a table, or the column named."""
    df = data.draw(native_tables(data.draw(st.integers(1, 5))))
    col = data.draw(st.sampled_from(list(REQUEST_SCHEMA)))
    dtype = data.draw(st.sampled_from(ODD_DTYPES))
    try:
        if dtype == pl.Struct({"a": pl.Int64}):
            odd = df.select(pl.struct(pl.col("input_tokens").alias("a")).alias(col))[col]
        elif dtype == pl.List(pl.Int64):
            odd = df.select(pl.concat_list(pl.col("input_tokens")).alias(col))[col]
        else:
            odd = df[col].cast(dtype, strict=False)
    except (pl.exceptions.PolarsError, TypeError, ValueError):
        tried("parquet:dtypes", "uncastable")
        return
    path = workdir / f"d{next(_counter)}.parquet"
    df.with_columns(odd.alias(col)).write_parquet(path)
    outcome = check_load(path, "native", n_records=df.height)
    tried("parquet:dtypes", outcome)
    path.unlink()

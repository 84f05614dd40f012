"""Loaders, writer and transforms: every format from small files, every bad input's message, round trips."""

from __future__ import annotations

import json
import math
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.factories import draw_native_table
from driftsim.traces import (
    REQUEST_SCHEMA,
    TraceError,
    assign_tenants,
    clip_duration,
    detect_format,
    head,
    inspect_trace,
    load_trace,
    load_trace_with_report,
    parse_tenant_weights,
    scale_rate,
    set_priorities,
    set_slos,
    validate_trace,
    write_trace,
)

BUNDLED = Path(__file__).resolve().parent.parent / "traces" / "data" / "azure2023_code.csv"


def put(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def jsonl(tmp_path: Path, name: str, records: list[dict]) -> Path:
    return put(tmp_path, name, "".join(json.dumps(r) + "\n" for r in records))


def assert_table(df: pl.DataFrame) -> None:
    assert list(df.schema.items()) == list(REQUEST_SCHEMA.items())
    validate_trace(df)


def error(path: Path, **kw) -> TraceError:
    with pytest.raises(TraceError) as exc:
        load_trace(path, **kw)
    return exc.value


# --------------------------------------------------------------------------- formats


def test_azure_2023_naive_timestamps(tmp_path):
    p = put(
        tmp_path,
        "a.csv",
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:17:03.9799600,4808,10\n"
        "2023-11-16 18:17:04.0319600,3180,8\n"
        "2023-11-16 18:17:05.0000001,110,27\n",
    )
    assert detect_format(p) == "azure"
    df = load_trace(p)
    assert_table(df)
    assert df["request_id"].to_list() == [0, 1, 2]
    assert df["tenant"].to_list() == ["default"] * 3
    assert df["input_tokens"].to_list() == [4808, 3180, 110]
    assert df["output_tokens"].to_list() == [10, 8, 27]
    assert df["arrival_s"].to_list() == pytest.approx([0.0, 0.052, 1.0200401], abs=1e-9)
    assert df["prompt"].null_count() == 3


def test_azure_2024_utc_with_missing_fraction(tmp_path):
    p = put(
        tmp_path,
        "a2024.csv",
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2024-05-10 00:00:00+00:00,100,5\n"
        "2024-05-10 00:00:00.0097210+00:00,200,6\n"
        "2024-05-10 00:00:02.5+00:00,300,7\n",
    )
    df = load_trace(p)
    assert df["arrival_s"].to_list() == pytest.approx([0.0, 0.009721, 2.5], abs=1e-12)


def test_timestamp_layouts_mix_in_one_file(tmp_path):
    p = put(
        tmp_path,
        "mix.csv",
        AZ + "2024-05-10 00:00:00,1,1\n"
        "2024-05-10T00:00:01Z,1,1\n"
        "2024-05-10 05:30:02.25+05:30,1,1\n"
        "2024-05-09 23:00:03.0000005-01:00,1,1\n",
    )
    assert load_trace(p)["arrival_s"].to_list() == pytest.approx([0.0, 1.0, 2.25, 3.0000005], abs=1e-12)


def test_bundled_azure_code_trace():
    df, report = load_trace_with_report(BUNDLED)
    assert df.height == 8819 and report.rows_read == 8819 and report.repairs == []
    first = df.row(0, named=True)
    assert first["request_id"] == 0 and first["arrival_s"] == 0.0
    assert (first["tenant"], first["input_tokens"], first["output_tokens"]) == ("default", 4808, 10)
    assert df["arrival_s"][1] == pytest.approx(0.052)


def test_burstgpt_tenant_from_model_and_failed_rows_dropped_with_report(tmp_path):
    p = put(
        tmp_path,
        "b.csv",
        "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
        "5,ChatGPT,472,18,490,Conversation log\n"
        "45,ChatGPT,1087,0,1087,Conversation log\n"
        "118,GPT-4,417,276,693,API log\n"
        "120,GPT-4,0,0,0,API log\n",
    )
    assert detect_format(p) == "burstgpt"
    df, report = load_trace_with_report(p)
    assert_table(df)
    assert df["tenant"].to_list() == ["ChatGPT", "GPT-4"]
    assert df["request_id"].to_list() == [0, 2]  # source row - 1, so ids point back into the file
    assert df["arrival_s"].to_list() == [5.0, 118.0]
    assert report.rows_read == 4 and report.rows_loaded == 2 and report.rows_dropped == 2
    assert report.repairs == ["dropped 2 failed requests (Response tokens = 0) at rows 2, 4"]


def test_burstgpt_all_failed_is_an_error(tmp_path):
    p = put(tmp_path, "b.csv", "Timestamp,Model,Request tokens,Response tokens\n1,ChatGPT,5,0\n")
    assert "all 1 requests failed" in str(error(p))


def test_mooncake_ms_to_seconds(tmp_path):
    p = jsonl(
        tmp_path,
        "m.jsonl",
        [
            {"timestamp": 0, "input_length": 40160, "output_length": 6, "hash_ids": [0, 1]},
            {"timestamp": 1500, "input_length": 100, "output_length": 4, "hash_ids": [2]},
        ],
    )
    assert detect_format(p) == "mooncake"
    df = load_trace(p)
    assert_table(df)
    assert df["arrival_s"].to_list() == [0.0, 1.5]
    assert df["input_tokens"].to_list() == [40160, 100]


def test_bailian_conversations_become_sessions_with_their_block_ids(tmp_path):
    """parent_chat_id links a conversation's requests into one session (its first request's id, or the
    first missing parent's where the file starts mid-conversation), turns by arrival; a lone request
    stays a plain one; hash_ids are its prefix identity, 16 tokens each."""
    def rec(chat, parent, t, n, ids):
        return {"chat_id": chat, "parent_chat_id": parent, "timestamp": t, "input_length": n, "output_length": 5,
                "type": "text", "turn": 9, "hash_ids": ids}

    p = jsonl(tmp_path, "q.jsonl", [
        rec(10, -1, 0.0, 40, [1, 2, 3]), rec(11, -1, 0.5, 20, [7, 8]), rec(12, 10, 3.0, 80, [1, 2, 3, 4, 5]),
        rec(14, 99, 1.0, 30, [20, 21]), rec(15, 14, 2.0, 60, [20, 21, 22, 23]),
        rec(13, 12, 5.0, 100, [1, 2, 3, 4, 5, 6, 9]), rec(16, 10, 5.0, 90, [1, 2, 3, 4, 5, 6]),  # a branch
    ])
    df = load_trace(p)
    assert_table(df)
    got = {r["request_id"]: (r["session_id"], r["turn"]) for r in df.iter_rows(named=True)}
    assert got == {10: (10, 1), 11: (None, None), 14: (99, 1), 15: (99, 2), 12: (10, 2), 13: (10, 3), 16: (10, 4)}
    assert df.filter(pl.col("request_id") == 13)["prefix_ids"].to_list() == [[1, 2, 3, 4, 5, 6, 9]]
    assert set(df["prefix_block_tokens"].to_list()) == {16}


def test_bailian_parent_cycle_is_a_named_error(tmp_path):
    base = {"timestamp": 0.0, "input_length": 10, "output_length": 2, "type": "text", "turn": 1}
    p = jsonl(tmp_path, "q.jsonl", [{"chat_id": 1, "parent_chat_id": 2, **base}, {"chat_id": 2, "parent_chat_id": 1, **base}])
    with pytest.raises(TraceError, match="parent_chat_id.*leads back to itself"):
        load_trace(p)


def test_a_bailian_conversation_is_replayed_turn_after_turn(tmp_path):
    """A follow-up sent (in the trace) before the previous answer finished in the simulation waits for it."""
    from driftsim.costmodel.profiles import load_profile
    from driftsim.sim.config import EngineConfig
    from driftsim.sim.sessions import simulate_sessions

    base = {"type": "text", "turn": 1, "output_length": 200}
    p = jsonl(tmp_path, "q.jsonl", [
        {"chat_id": 1, "parent_chat_id": -1, "timestamp": 0.0, "input_length": 100, **base},
        {"chat_id": 2, "parent_chat_id": 1, "timestamp": 0.01, "input_length": 400, **base},
    ])
    df = load_trace(p)
    prof = load_profile("a100-llama-3.1-8b-kernels")
    res = simulate_sessions(df, cost=prof.cost_model, engine=EngineConfig(num_gpu_blocks=1000))
    r = {row["request_id"]: row for row in res.requests.iter_rows(named=True)}
    assert r[2]["arrival_s"] >= r[1]["finish_s"] > 0.01  # sent when turn 1 was answered, not at 0.01 s


def test_bailian_keeps_chat_id(tmp_path):
    rec = {"parent_chat_id": -1, "type": "text", "turn": 1, "hash_ids": [1, 2]}
    p = jsonl(
        tmp_path,
        "q.jsonl",
        [
            {"chat_id": 17, "timestamp": 0.25, "input_length": 50, "output_length": 9, **rec},
            {"chat_id": 3, "timestamp": 1.0, "input_length": 60, "output_length": 10, **rec},
        ],
    )
    assert detect_format(p) == "bailian"
    df = load_trace(p)
    assert_table(df)
    assert df["request_id"].to_list() == [17, 3]
    assert df["arrival_s"].to_list() == [0.25, 1.0]


def test_vidur_replay_csv(tmp_path):
    p = put(tmp_path, "v.csv", "arrived_at,num_prefill_tokens,num_decode_tokens\n0.0,10,3\n0.5,20.0,4\n")
    assert detect_format(p) == "vidur"
    df = load_trace(p)
    assert_table(df)
    assert df["input_tokens"].to_list() == [10, 20]  # "20.0" as pandas writes it is an integer


def test_native_csv_fills_missing_optional_columns_and_reports_extra_ones(tmp_path):
    p = put(
        tmp_path,
        "n.csv",
        "request_id,arrival_s,tenant,input_tokens,output_tokens,priority,note\n"
        "7,0.0,gold,10,2,0,x\n"
        "8,0.5,free,11,3,,y\n",
    )
    assert detect_format(p) == "native"
    df, report = load_trace_with_report(p)
    assert_table(df)
    assert df["priority"].to_list() == [0, None]
    assert df["slo_ttft_s"].null_count() == 2
    assert report.repairs == ["ignored 1 column(s) not in the request schema: ['note']"]


def test_unknown_extension_is_sniffed(tmp_path):
    p = put(tmp_path, "trace.txt", "arrived_at,num_prefill_tokens,num_decode_tokens\n0,1,1\n")
    assert detect_format(p) == "vidur"
    q = jsonl(tmp_path, "trace.log", [{"timestamp": 0, "input_length": 1, "output_length": 1}])
    assert detect_format(q) == "mooncake"


def test_unsorted_arrivals_are_sorted_stably_and_reported(tmp_path):
    p = put(
        tmp_path,
        "v.csv",
        "arrived_at,num_prefill_tokens,num_decode_tokens\n3,1,1\n1,2,1\n1,3,1\n2,4,1\n5,5,1\n",
    )
    df, report = load_trace_with_report(p)
    assert df["arrival_s"].to_list() == [1, 1, 2, 3, 5]
    assert df["input_tokens"].to_list() == [2, 3, 4, 1, 5]  # ties keep file order
    assert df["request_id"].to_list() == [1, 2, 3, 0, 4]
    assert report.repairs == ["sorted 3 out-of-order arrivals (at rows 2, 3, 4); ties keep file order"]


# --------------------------------------------------------------------------- errors

AZ = "TIMESTAMP,ContextTokens,GeneratedTokens\n"
OK = "2023-11-16 18:17:03.9799600,10,5\n"


@pytest.mark.parametrize(
    "rows, row, field, words",
    [
        ("2023-11-16 18:17:04,10,-4\n", 2, "GeneratedTokens", ["integer >= 1", "'-4'"]),
        ("2023-11-16 18:17:04,NaN,4\n", 2, "ContextTokens", ["integer >= 1", "'NaN'"]),
        ("2023-11-16 18:17:04,0,4\n", 2, "ContextTokens", ["integer >= 1", "'0'"]),
        ("2023-11-16 18:17:04,10,0\n", 2, "GeneratedTokens", ["integer >= 1", "'0'"]),
        ("2023-11-16 18:17:04,10.5,3\n", 2, "ContextTokens", ["integer >= 1", "'10.5'"]),
        ("2023-11-16 18:17:04,ten,3\n", 2, "ContextTokens", ["integer >= 1", "'ten'"]),
        ("2023-11-16 18:17:04,,3\n", 2, "ContextTokens", ["empty value"]),
        ("yesterday,10,3\n", 2, "TIMESTAMP", ["timestamp like", "'yesterday'"]),
        ("2023-02-30 00:00:00,10,3\n", 2, "TIMESTAMP", ["timestamp like"]),
        (OK + "2023-11-16 18:17:04,10,x\n2023-11-16 18:17:04,10,y\n", 3, "GeneratedTokens", ["1 more rows"]),
    ],
)
def test_bad_values_name_file_row_and_field(tmp_path, rows, row, field, words):
    p = put(tmp_path, "bad.csv", AZ + OK + rows)
    e = error(p)
    assert (e.row, e.field, e.source) == (row, field, str(p))
    msg = str(e)
    assert str(p) in msg and f"row {row}" in msg and f"'{field}'" in msg
    for w in words:
        assert w in msg


@pytest.mark.parametrize(
    "text, field, words",
    [
        ("0,1,1\n-1,1,1\n", "arrived_at", ["number >= 0", "'-1'"]),
        ("0,1,1\nsoon,1,1\n", "arrived_at", ["'soon'"]),
        ("0,1,1\nnan,1,1\n", "arrived_at", ["finite", "'nan'"]),
        ("0,1,1\ninf,1,1\n", "arrived_at", ["finite", "'inf'"]),
    ],
)
def test_bad_times(tmp_path, text, field, words):
    p = put(tmp_path, "v.csv", "arrived_at,num_prefill_tokens,num_decode_tokens\n" + text)
    e = error(p)
    assert (e.row, e.field) == (2, field)
    assert all(w in str(e) for w in words)


def test_jsonl_missing_and_null_values(tmp_path):
    p = jsonl(
        tmp_path,
        "m.jsonl",
        [
            {"timestamp": 0, "input_length": 5, "output_length": 1},
            {"timestamp": 1, "input_length": 5},
        ],
    )
    e = error(p)
    assert (e.row, e.field) == (2, "output_length") and "empty value" in str(e)
    q = jsonl(tmp_path, "n.jsonl", [{"timestamp": 0, "input_length": "many", "output_length": 1}])
    e = error(q)
    assert (e.row, e.field) == (1, "input_length") and "'many'" in str(e)


def test_missing_column_lists_found_and_expected(tmp_path):
    p = put(tmp_path, "a.csv", "TIMESTAMP,ContextTokens\n2023-11-16 18:17:03,10\n")
    msg = str(error(p))
    assert "missing column(s) ['GeneratedTokens']" in msg
    assert "found ['TIMESTAMP', 'ContextTokens']" in msg
    assert "expected ['TIMESTAMP', 'ContextTokens', 'GeneratedTokens']" in msg


def test_native_missing_required_column(tmp_path):
    p = put(tmp_path, "n.csv", "request_id,arrival_s,input_tokens,output_tokens\n0,0,1,1\n")
    assert "missing column(s) ['tenant']" in str(error(p))


def test_unknown_format(tmp_path):
    p = put(tmp_path, "x.csv", "foo,bar\n1,2\n")
    msg = str(error(p))
    assert "unknown trace format" in msg and "expected one of" in msg and "azure" in msg and "['foo', 'bar']" in msg
    msg = str(error(p, format="nosuch"))
    assert "unknown trace format 'nosuch'" in msg and "burstgpt" in msg and "sharegpt" in msg


def test_empty_traces(tmp_path):
    assert "empty trace" in str(error(put(tmp_path, "h.csv", AZ)))
    assert "empty trace" in str(error(put(tmp_path, "e.csv", "")))
    assert "empty trace" in str(error(put(tmp_path, "e.jsonl", "\n")))


def test_duplicate_ids_name_both_rows(tmp_path):
    p = jsonl(
        tmp_path,
        "q.jsonl",
        [{"chat_id": i, "timestamp": t, "input_length": 5, "output_length": 1} for i, t in [(1, 0), (2, 1), (1, 2)]],
    )
    e = error(p)
    assert (e.row, e.field) == (3, "chat_id")
    assert "duplicate request id 1, first seen at row 1" in str(e)


def test_json_array_is_not_json_lines(tmp_path):
    p = put(tmp_path, "sharegpt.json", '[{"conversations": []}]\n')
    assert "not JSON lines" in str(error(p, format="mooncake"))
    assert "fewer than two non-empty turns" in str(error(p)) or "no successful requests" in str(error(p))


def test_native_parquet_typed_columns_are_validated(tmp_path):
    good = {"request_id": [0, 1], "arrival_s": [0.0, 1.0], "tenant": ["a", "b"], "input_tokens": [5, 6]}
    pl.DataFrame({**good, "output_tokens": [2.0, 3.0]}).write_parquet(tmp_path / "ok.parquet")
    df = load_trace(tmp_path / "ok.parquet")
    assert_table(df)
    assert df["output_tokens"].to_list() == [2, 3] and df["prompt"].null_count() == 2
    pl.DataFrame({**good, "output_tokens": [2.0, 3.5]}).write_parquet(tmp_path / "bad.parquet")
    e = error(tmp_path / "bad.parquet")
    assert (e.row, e.field) == (2, "output_tokens") and "3.5" in str(e)
    pl.DataFrame({**good, "output_tokens": [True, False]}).write_parquet(tmp_path / "bool.parquet")
    assert "expected numbers" in str(error(tmp_path / "bool.parquet"))


def test_large_parquet_read_column_by_column_loads_the_same_table_and_errors(tmp_path, monkeypatch):
    from driftsim.traces import loaders

    good = {"request_id": [0, 1, 2], "arrival_s": [0.0, 1.0, 1.0], "tenant": [" a", "b", "b"],
            "input_tokens": [5, 6, 7], "output_tokens": [2, 3, 4], "priority": [None, 1, None],
            "prompt": [None, None, None], "slo_e2e_s": [None, None, None], "extra": [1, 2, 3]}  # fmt: skip
    pl.DataFrame(good).write_parquet(tmp_path / "ok.parquet")
    pl.DataFrame({**good, "input_tokens": [5, 0, 7]}).write_parquet(tmp_path / "bad.parquet")
    one_go = loaders.load_trace_with_report(tmp_path / "ok.parquet")
    one_go_error = str(error(tmp_path / "bad.parquet"))
    monkeypatch.setattr(loaders, "_COLUMNWISE_ROWS", 1)
    by_column = loaders.load_trace_with_report(tmp_path / "ok.parquet")
    assert by_column[0].equals(one_go[0]) and by_column[0].schema == one_go[0].schema
    assert by_column[1] == one_go[1] and by_column[1].repairs  # stripped " a", ignored "extra"
    assert str(error(tmp_path / "bad.parquet")) == one_go_error and "row 2" in one_go_error


def test_no_such_file(tmp_path):
    assert "no such file" in str(error(tmp_path / "nope.csv"))


def test_format_mismatch_is_a_trace_error(tmp_path):
    p = put(tmp_path, "a.csv", AZ + OK)
    assert "missing column(s)" in str(error(p, format="vidur"))


# --------------------------------------------------------------------------- writer and round trip

names = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=8).filter(
    lambda s: s.strip() == s  # tenant names are stripped on load
)


@st.composite
def tables(draw) -> pl.DataFrame:
    return draw_native_table(draw, draw(st.integers(1, 12)), seconds=st.floats(0, 1e7, allow_nan=False),
                             tenant_names=names, tokens=st.integers(1, 2**40))


@pytest.mark.parametrize("ext", ["csv", "parquet"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(df=tables())
def test_write_load_round_trip(tmp_path, ext, df):
    p = tmp_path / f"t.{ext}"
    write_trace(df, p)
    back, report = load_trace_with_report(p)
    assert report.repairs == [] and report.format == "native"
    assert back.equals(df)


def test_writer_validates_first(tmp_path):
    df = pl.DataFrame({"request_id": [0], "arrival_s": [0.0]})
    with pytest.raises(TraceError, match="missing"):
        write_trace(df, tmp_path / "x.csv")
    good = load_trace(BUNDLED).head(3)
    bad = good.with_columns(pl.Series("output_tokens", [1, 0, 1]))
    with pytest.raises(TraceError, match=r"row 2, field 'output_tokens'"):
        write_trace(bad, tmp_path / "x.parquet")
    with pytest.raises(TraceError, match="use .csv or .parquet"):
        write_trace(good, tmp_path / "x.json")
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- transforms and inspect


@pytest.fixture(scope="module")
def azure() -> pl.DataFrame:
    return load_trace(BUNDLED)


def test_assign_tenants_random_is_deterministic_and_weighted(azure):
    a = assign_tenants(azure, {"gold": 1, "free": 3}, seed=7)
    assert a.equals(assign_tenants(azure, {"gold": 1, "free": 3}, seed=7))
    assert not a.equals(assign_tenants(azure, {"gold": 1, "free": 3}, seed=8))
    share = (a["tenant"] == "gold").mean()
    assert abs(share - 0.25) < 0.02
    assert_table(a)


def test_assign_tenants_round_robin_is_exact(azure):
    a = assign_tenants(azure.head(8), ["a", "b"], seed=0, method="round_robin")
    assert a["tenant"].to_list() == ["a", "b"] * 4
    w = assign_tenants(azure, {"x": 1, "y": 3}, seed=0, method="round_robin")
    assert abs((w["tenant"] == "x").sum() - azure.height / 4) <= 1


def test_assign_tenants_refuses_to_overwrite_real_tenants(azure):
    a = assign_tenants(azure, ["a", "b"], seed=0)
    with pytest.raises(ValueError, match="replace=True"):
        assign_tenants(a, ["c"], seed=0)
    assert set(assign_tenants(a, ["c"], seed=0, replace=True)["tenant"].unique()) == {"c"}
    with pytest.raises(ValueError):
        assign_tenants(azure, {"a": -1.0}, seed=0)


def test_scale_clip_head(azure):
    s = scale_rate(azure, 2.0)
    assert s["arrival_s"].to_list() == pytest.approx((azure["arrival_s"] / 2).to_list())
    c = clip_duration(azure, 60.0)
    assert c["arrival_s"].max() < 60.0 and c.height == (azure["arrival_s"] < 60).sum()
    assert head(azure, 5).equals(azure.head(5))
    with pytest.raises(ValueError):
        scale_rate(azure, 0)


def test_set_slos_and_priorities(azure):
    a = assign_tenants(azure.head(10), ["gold", "free"], seed=0, method="round_robin")
    b = set_priorities(set_slos(a, {"gold": (0.5, 10.0), "free": (None, 60.0)}), {"gold": 0})
    gold, free = b.filter(pl.col("tenant") == "gold"), b.filter(pl.col("tenant") == "free")
    assert gold["slo_ttft_s"].to_list() == [0.5] * 5 and gold["slo_e2e_s"].to_list() == [10.0] * 5
    assert free["slo_ttft_s"].null_count() == 5 and free["slo_e2e_s"].to_list() == [60.0] * 5
    assert gold["priority"].to_list() == [0] * 5 and free["priority"].null_count() == 5
    assert_table(b)
    with pytest.raises(ValueError, match="not in the trace"):
        set_slos(a, {"glod": (1.0, 2.0)})


def test_inspect_trace(azure):
    info = inspect_trace(azure)
    assert info["requests"] == 8819
    assert info["span_s"] == pytest.approx(azure["arrival_s"].max())
    assert info["rate_per_s"] == pytest.approx(8819 / info["span_s"])
    assert info["tenants"]["default"]["requests"] == 8819
    assert info["input_tokens"]["max"] == azure["input_tokens"].max()
    assert info["input_tokens"]["p50"] <= info["input_tokens"]["p90"] <= info["input_tokens"]["p99"]
    assert info["prompt_share"] == 0.0
    assert all(not isinstance(v, pl.DataFrame) for v in info.values())
    assert math.isfinite(info["output_tokens"]["mean"])


def test_parse_tenant_weights_reads_names_with_optional_weights():
    assert parse_tenant_weights("premium=2, standard=1,,batch") == {"premium": 2.0, "standard": 1.0, "batch": 1.0}
    with pytest.raises(ValueError, match="weight of 'a' is not a number"):
        parse_tenant_weights("a=x")
    with pytest.raises(ValueError, match="expected names"):
        parse_tenant_weights(" , ")

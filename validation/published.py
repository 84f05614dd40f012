"""Published real vLLM serving runs against the bundled profiles: load the rows, simulate each set-up, score.

The rows live in ``published_runs.toml`` beside this module, one
``[[measurement]]`` per published figure (its fields are listed at the top
of that file). Each row names the bundled profile that should reproduce it,
the engine limits the published run had, and a workload: either every
request's prompt and output length as the source recorded them, or the
``vllm bench serve`` flags of a synthetic one. Rows sharing a set-up are
simulated once.

Metrics are computed from the simulated requests the way vLLM's benchmark
client computes them from its own (``benchmark_serving.py``): TTFT over all
requests, with 0 for a request whose text came back empty (the client never
saw a token); TPOT per request with more than one output token, ``(e2e -
ttft) / (tokens - 1)``; mean ITL pooled over all gaps; output throughput =
output tokens / the time from the first send to the last completion.
Percentiles are numpy's linear ones, as there.

Targets by metric kind: per-token latency (TPOT, ITL) within 10 %;
TTFT and E2E within 10 % for a single request at a time, 15 % under load;
throughput within 10 %.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import polars as pl

from driftsim.costmodel.profiles import Profile, ProfileError, load_profile
from driftsim.errors import ConfigError
from driftsim.sim.closed_loop import ClosedLoop, simulate_closed_loop
from driftsim.sim.config import EngineConfig
from driftsim.sim.run import simulate
from driftsim.traces.bench_workload import BenchWorkload, generate_bench

__all__ = ["DEFAULT_RUNS", "METRICS", "Measurement", "Rejected", "Workload", "load_runs", "score", "score_table"]

#: The bundled data file.
DEFAULT_RUNS = Path(__file__).with_name("published_runs.toml")

#: Target error bounds in percent, by metric kind.
TARGET_PCT = {"per_token": 10.0, "single_request": 10.0, "under_load": 15.0, "throughput": 10.0}


@dataclass(frozen=True)
class _Metric:
    kind: str  # "per_token", "latency" (TTFT, E2E) or "throughput"
    compute: Callable[[dict[str, np.ndarray]], float]


def _pct(key: str, q: float) -> Callable[[dict[str, np.ndarray]], float]:
    return lambda v: float(np.percentile(v[key], q)) * 1e3 if v[key].size else math.nan


def _mean(key: str) -> Callable[[dict[str, np.ndarray]], float]:
    return lambda v: float(np.mean(v[key])) * 1e3 if v[key].size else math.nan


def _itl_mean(v: dict[str, np.ndarray]) -> float:
    gaps = v["gaps"].sum()
    return float(v["decode_s"].sum() / gaps) * 1e3 if gaps else math.nan


#: Metric name (its unit last) -> what it is and how the client computes it from per-request arrays.
METRICS: dict[str, _Metric] = {
    "ttft_mean_ms": _Metric("latency", _mean("ttft")),
    "ttft_median_ms": _Metric("latency", _pct("ttft", 50)),
    "ttft_p99_ms": _Metric("latency", _pct("ttft", 99)),
    "tpot_mean_ms": _Metric("per_token", _mean("tpot")),
    "tpot_median_ms": _Metric("per_token", _pct("tpot", 50)),
    "tpot_p99_ms": _Metric("per_token", _pct("tpot", 99)),
    "itl_mean_ms": _Metric("per_token", _itl_mean),
    "e2e_mean_ms": _Metric("latency", _mean("e2e")),
    "e2e_median_ms": _Metric("latency", _pct("e2e", 50)),
    "e2e_p99_ms": _Metric("latency", _pct("e2e", 99)),
    "output_throughput_tok_s": _Metric("throughput", lambda v: float(v["output"].sum() / v["duration"][0])),
    "request_throughput_req_s": _Metric("throughput", lambda v: float(v["output"].size / v["duration"][0])),
}


@dataclass(frozen=True)
class Workload:
    """What the client sent: every request's lengths (``input_lens``/``output_lens``) or synthetic flags."""

    name: str
    description: str
    input_lens: tuple[int, ...] = ()  # prompt tokens per request, in send order
    output_lens: tuple[int, ...] = ()  # output tokens per request as the client counted them (0: empty text)
    num_prompts: int = 0  # synthetic: requests
    input_len: int = 0  # synthetic: mean prompt tokens
    output_len: int = 0  # synthetic: mean output tokens
    range_ratio: float = 0.0  # synthetic: lengths uniform in [len*(1-r), len*(1+r)]
    send_s: tuple[float, ...] = ()  # recorded: each request's send time, s after the first (rows' request_rate "recorded")
    shared_prefix_tokens: int = 0  # the first tokens of every prompt are the same text (prefix caching finds them)

    @property
    def requests(self) -> int:
        return len(self.input_lens) or self.num_prompts


@dataclass(frozen=True)
class Measurement:
    """One published figure and the set-up that produced it (fields as in ``published_runs.toml``)."""

    id: str
    source: str
    url: str
    gpu: str
    tp: int
    model: str
    profile: str
    not_covered: str
    vllm_version: str
    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int
    chunked_prefill: bool
    prefix_caching: bool
    gpu_memory_utilization: float
    block_size: int
    async_scheduling: bool
    reserve_full_prompt: bool
    workload: Workload
    request_rate: float  # requests per second; inf: all at once
    max_concurrency: int  # 0: no cap
    metric: str
    published: float
    note: str = ""
    num_gpu_blocks: int = 0  # KV blocks the published server reported; 0: the profile's at gpu_memory_utilization
    licence: str = field(default="", compare=False)  # from the row's [source.*] table

    @property
    def target_pct(self) -> float:
        kind = METRICS[self.metric].kind
        if kind == "latency":
            single = self.max_concurrency == 1 or self.workload.requests == 1
            return TARGET_PCT["single_request" if single else "under_load"]
        return TARGET_PCT[kind]

    @property
    def setup(self) -> str:
        """One line a reader recognises the published run by."""
        rate = ("sent at the recorded times" if self.workload.send_s else
                "all at once" if math.isinf(self.request_rate) else f"{self.request_rate:g} req/s")
        cap = f", at most {self.max_concurrency} in flight" if self.max_concurrency else ""
        return (f"{self.gpu} TP{self.tp}, {self.model}, vLLM {self.vllm_version}, "
                f"{self.workload.requests} requests {rate}{cap}")


@dataclass(frozen=True)
class Rejected:
    """A published source looked at and left out, with what it lacked."""

    source: str
    url: str
    missing: str


_ROW_TYPES = {"id": str, "source": str, "url": str, "gpu": str, "tp": int, "model": str, "profile": str,
              "not_covered": str, "vllm_version": str, "max_num_seqs": int, "max_num_batched_tokens": int,
              "max_model_len": int, "chunked_prefill": bool, "prefix_caching": bool,
              "gpu_memory_utilization": float, "block_size": int, "async_scheduling": bool,
              "reserve_full_prompt": bool, "workload": str, "request_rate": (float, str), "max_concurrency": int,
              "metric": str, "published": float, "note": str}  # fmt: skip
_OPTIONAL_ROW_TYPES = {"num_gpu_blocks": int}
_WORKLOAD_KEYS = {"source", "description", "input_lens", "output_lens", "num_prompts", "input_len", "output_len",
                  "range_ratio", "send_s", "shared_prefix_tokens"}  # fmt: skip


def load_runs(path: str | Path = DEFAULT_RUNS) -> tuple[list[Measurement], list[Rejected]]:
    """The measurements and rejected sources of ``path``; a bad field raises ConfigError naming file, row, field."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not a valid TOML file: {exc}") from None
    unknown = set(data) - {"source", "workload", "measurement", "rejected"}
    if unknown:
        raise ConfigError(f"{path}: unknown table(s) {', '.join(sorted(unknown))}; expected source, workload, "
                          "measurement, rejected")
    sources = _table_of_tables(data, "source", path)
    workloads = {name: _workload(name, t, path, sources) for name, t in _table_of_tables(data, "workload", path).items()}
    rows = [_measurement(i, r, path, sources, workloads) for i, r in enumerate(_array(data, "measurement", path))]
    seen: set[str] = set()
    for m in rows:
        if m.id in seen:
            raise ConfigError(f"{path}: measurement id {m.id!r} appears twice; ids must be unique")
        seen.add(m.id)
    rejected = [_rejected(i, r, path) for i, r in enumerate(_array(data, "rejected", path))]
    return rows, rejected


def _table_of_tables(data: dict, key: str, path: Path) -> dict[str, dict]:
    tables = data.get(key, {})
    if not isinstance(tables, dict) or not all(isinstance(t, dict) for t in tables.values()):
        raise ConfigError(f"{path}: [{key}.NAME] must be tables")
    return tables


def _array(data: dict, key: str, path: Path) -> list[dict]:
    rows = data.get(key, [])
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ConfigError(f"{path}: {key} must be an array of tables ([[{key}]])")
    return rows


def _workload(name: str, t: dict, path: Path, sources: dict) -> Workload:
    where = f"{path}: [workload.{name}]"
    unknown = set(t) - _WORKLOAD_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}; expected some of "
                          f"{', '.join(sorted(_WORKLOAD_KEYS))}")
    if t.get("source") not in sources:
        raise ConfigError(f"{where} source: expected one of the [source.*] tables {sorted(sources)}, "
                          f"got {t.get('source')!r}")
    lens = {k: t.get(k, []) for k in ("input_lens", "output_lens")}
    for k, v in lens.items():
        if not isinstance(v, list) or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v):
            raise ConfigError(f"{where} {k}: expected a list of integers >= 0")
    send, shared = t.get("send_s", []), t.get("shared_prefix_tokens", 0)
    if not isinstance(shared, int) or isinstance(shared, bool) or shared < 0:
        raise ConfigError(f"{where} shared_prefix_tokens: expected an integer >= 0, got {shared!r}")
    if lens["input_lens"] or lens["output_lens"]:
        if len(lens["input_lens"]) != len(lens["output_lens"]) or min(lens["input_lens"]) < 1:
            raise ConfigError(f"{where}: input_lens and output_lens must have one entry per request "
                              f"(got {len(lens['input_lens'])} and {len(lens['output_lens'])}), prompts >= 1 token")
        if shared > min(lens["input_lens"]):
            raise ConfigError(f"{where} shared_prefix_tokens: {shared} is longer than the shortest prompt "
                              f"({min(lens['input_lens'])} tokens)")
        _check_sends(send, len(lens["input_lens"]), where)
        return Workload(name, str(t.get("description", "")), tuple(lens["input_lens"]), tuple(lens["output_lens"]),
                        send_s=tuple(float(x) for x in send), shared_prefix_tokens=shared)
    if send or shared:
        raise ConfigError(f"{where}: send_s and shared_prefix_tokens need input_lens and output_lens")
    try:
        w = Workload(name, str(t.get("description", "")), num_prompts=t["num_prompts"], input_len=t["input_len"],
                     output_len=t["output_len"], range_ratio=float(t.get("range_ratio", 0.0)))
        BenchWorkload(num_prompts=w.num_prompts, input_len=w.input_len, output_len=w.output_len,
                      range_ratio=w.range_ratio)  # checks the flags
    except KeyError as exc:
        raise ConfigError(f"{where}: expected input_lens and output_lens, or num_prompts, input_len and "
                          f"output_len; {exc.args[0]} is missing") from None
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return w


def _check_sends(send: object, n: int, where: str) -> None:
    """Recorded send times: none, or one per request, from 0, in send order."""
    if isinstance(send, list) and not send:
        return
    ok = (isinstance(send, list) and len(send) == n
          and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in send))
    if not ok or send[0] != 0 or any(b < a for a, b in zip(send, send[1:])):
        raise ConfigError(f"{where} send_s: expected one send time per request (s after the first, so starting at 0, "
                          f"never decreasing); got {len(send) if isinstance(send, list) else send!r} for {n} requests")


def _measurement(i: int, r: dict, path: Path, sources: dict, workloads: dict[str, Workload]) -> Measurement:
    where = f"{path}: measurement {i + 1} ({r.get('id', 'no id')})"
    missing = [k for k in _ROW_TYPES if k not in r]
    unknown = sorted(set(r) - set(_ROW_TYPES) - set(_OPTIONAL_ROW_TYPES))
    if missing or unknown:
        raise ConfigError(f"{where}: " + "; ".join(
            ([f"missing field(s) {', '.join(missing)}"] if missing else [])
            + ([f"unknown field(s) {', '.join(unknown)}"] if unknown else [])))
    for key, kind in (_ROW_TYPES | _OPTIONAL_ROW_TYPES).items():
        if key in r and not _is(r[key], kind):
            expected = "a number, \"inf\" or \"recorded\"" if isinstance(kind, tuple) else kind.__name__
            raise ConfigError(f"{where} {key}: expected {expected}, got {r[key]!r}")
    values = dict(r)
    recorded = r["workload"] in workloads and bool(workloads[r["workload"]].send_s)
    if recorded != (r["request_rate"] == "recorded"):
        raise ConfigError(f"{where} request_rate: \"recorded\" exactly where the workload gives send_s "
                          f"(workload {r['workload']!r} {'does' if recorded else 'does not'}), got {r['request_rate']!r}")
    values["request_rate"] = math.nan if recorded else _rate(r["request_rate"], where)
    if r.get("num_gpu_blocks", 0) < 0:
        raise ConfigError(f"{where} num_gpu_blocks: expected an integer >= 1 (0 or absent: from the profile)")
    if r["source"] not in sources:
        raise ConfigError(f"{where} source: expected one of {sorted(sources)}, got {r['source']!r}")
    if r["workload"] not in workloads:
        raise ConfigError(f"{where} workload: expected one of {sorted(workloads)}, got {r['workload']!r}")
    if r["metric"] not in METRICS:
        raise ConfigError(f"{where} metric: expected one of {', '.join(METRICS)}, got {r['metric']!r}")
    if not (r["published"] > 0) or not math.isfinite(r["published"]):
        raise ConfigError(f"{where} published: expected a finite number > 0, got {r['published']!r}")
    if r["max_concurrency"] < 0 or r["tp"] < 1:
        raise ConfigError(f"{where}: expected max_concurrency >= 0 and tp >= 1")
    if bool(r["profile"]) == bool(r["not_covered"]):
        raise ConfigError(f"{where}: give exactly one of profile (the bundled profile simulating it) and "
                          "not_covered (why none does)")
    values["workload"] = workloads[r["workload"]]
    values["licence"] = str(sources[r["source"]].get("licence", ""))
    return Measurement(**values)


def _is(v, kind) -> bool:
    """Whether a TOML value has the field's type (a bool is no number; an integer is a float)."""
    if isinstance(v, bool):
        return kind is bool
    if kind is float or isinstance(kind, tuple):
        return isinstance(v, (int, float)) or (isinstance(kind, tuple) and isinstance(v, str))
    return isinstance(v, kind)


def _rate(v: float | str, where: str) -> float:
    rate = math.inf if v == "inf" else v
    if isinstance(rate, str) or not (rate > 0):
        raise ConfigError(f"{where} request_rate: expected a number > 0 or \"inf\", got {v!r}")
    return float(rate)


def _rejected(i: int, r: dict, path: Path) -> Rejected:
    keys = {f.name for f in fields(Rejected)}
    if set(r) != keys or not all(isinstance(v, str) and v for v in r.values()):
        raise ConfigError(f"{path}: rejected {i + 1}: expected the text fields {', '.join(sorted(keys))}")
    return Rejected(**r)


# --------------------------------------------------------------------------- simulation
def resolve_profile(m: Measurement) -> Profile:
    """The row's bundled profile, checked against the row's tensor parallelism."""
    try:
        profile = load_profile(m.profile)
    except ProfileError as exc:
        raise ConfigError(f"measurement {m.id} profile: {exc}") from None
    tp = int(profile.engine_defaults.get("tensor_parallel_size", 1))
    if tp != m.tp:
        raise ConfigError(f"measurement {m.id}: tp {m.tp} but profile {m.profile} is for TP{tp}")
    return profile


def _trace(m: Measurement, seed: int) -> pl.DataFrame:
    """The request table the client sent: recorded lengths (an empty output still produced one token), or synthetic."""
    w = m.workload
    if not w.input_lens:
        return generate_bench(BenchWorkload(num_prompts=w.num_prompts, request_rate=m.request_rate,
                                            input_len=w.input_len, output_len=w.output_len,
                                            range_ratio=w.range_ratio, seed=seed))
    rate = math.inf if w.send_s else m.request_rate
    base = generate_bench(BenchWorkload(num_prompts=w.requests, request_rate=rate, input_len=1, output_len=1,
                                        seed=seed))
    trace = base.with_columns(pl.Series("input_tokens", w.input_lens, dtype=base["input_tokens"].dtype),
                              pl.Series("output_tokens", [max(1, n) for n in w.output_lens],
                                        dtype=base["output_tokens"].dtype))
    if w.send_s:
        trace = trace.with_columns(pl.Series("arrival_s", w.send_s, dtype=base["arrival_s"].dtype))
    if w.shared_prefix_tokens:  # one prefix id covering the shared text: every prompt's first blocks are the same
        trace = trace.with_columns(pl.lit([0], dtype=pl.List(pl.Int64)).alias("prefix_ids"),
                                   pl.lit(w.shared_prefix_tokens, dtype=pl.Int64).alias("prefix_block_tokens"))
    return trace


def _engine(m: Measurement, profile: Profile) -> EngineConfig:
    # prefix caching as launched: a workload of lengths carries no prompt content, so its prompts share no
    # prefix and the cache only holds blocks (as with vLLM's random dataset, whose prompts are random tokens)
    limits = {f: getattr(m, f) for f in ("max_num_seqs", "max_num_batched_tokens", "max_model_len", "chunked_prefill",
                                         "prefix_caching", "gpu_memory_utilization", "block_size",
                                         "async_scheduling", "reserve_full_prompt")}  # fmt: skip
    allowed = {f.name for f in fields(EngineConfig)}
    values = {k: v for k, v in profile.engine_defaults.items() if k in allowed} | limits
    try:
        return EngineConfig(**values)
    except ConfigError as exc:
        raise ConfigError(f"measurement {m.id}: {exc}") from None


def _client_view(m: Measurement, requests: pl.DataFrame) -> dict[str, np.ndarray]:
    """Per-request arrays as the benchmark client sees them (see the module docstring)."""
    if not (requests["status"] == "ok").all():
        raise ConfigError(f"measurement {m.id}: {int((requests['status'] != 'ok').sum())} simulated requests did "
                          "not complete; the published run completed them all")
    w = m.workload
    # the client's own count where recorded, else what the engine generated
    out = np.asarray(w.output_lens, dtype=np.int64) if w.input_lens else requests["generated_tokens"].to_numpy()
    ttft, e2e = requests["ttft_s"].to_numpy(), requests["e2e_s"].to_numpy()
    decode = e2e - ttft
    multi = out > 1
    return {
        "ttft": np.where(out > 0, ttft, 0.0),
        "e2e": e2e,
        "tpot": decode[multi] / (out[multi] - 1),
        "decode_s": decode[multi],
        "gaps": out[multi] - 1,
        "output": out,
        "duration": np.array([float(requests["finish_s"].max())]),  # the first request leaves at t >= 0
    }


def _setup_key(m: Measurement) -> tuple:
    skip = {"id", "url", "metric", "published", "note", "licence", "source"}
    return tuple(getattr(m, f.name) for f in fields(Measurement) if f.name not in skip)


def simulate_measurement(m: Measurement, *, seed: int = 0) -> dict[str, np.ndarray]:
    """Simulate ``m``'s set-up with its profile; per-request arrays as the benchmark client computes them."""
    profile = resolve_profile(m)
    engine = _engine(m, profile)
    blocks = m.num_gpu_blocks or profile.kv_capacity_blocks(engine.block_size, engine.gpu_memory_utilization)
    kwargs = dict(cost=profile.cost_model, engine=engine, seed=seed, num_blocks=blocks)
    trace = _trace(m, seed)
    if m.max_concurrency:
        result = simulate_closed_loop(trace, ClosedLoop(max_concurrency=m.max_concurrency), **kwargs)
    else:
        result = simulate(trace, **kwargs)
    return _client_view(m, result.requests)


def score(rows: Iterable[Measurement], *, seed: int = 0) -> list[dict]:
    """One record per row: published, simulated, error %, target, met (None where not covered or not modelled)."""
    cache: dict[tuple, dict[str, np.ndarray]] = {}
    out = []
    for m in rows:
        reason = m.not_covered
        simulated = error = met = None
        if not reason:
            key = _setup_key(m)
            if key not in cache:
                cache[key] = simulate_measurement(m, seed=seed)
            simulated = METRICS[m.metric].compute(cache[key])
            error = (simulated - m.published) / m.published * 100.0
            met = abs(error) <= m.target_pct
        out.append({"id": m.id, "source": m.source, "url": m.url, "setup": m.setup, "profile": m.profile or None,
                    "metric": m.metric, "published": m.published, "simulated": simulated, "error_pct": error,
                    "target_pct": m.target_pct, "met": met, "not_covered": reason or None})
    return out


def score_table(records: list[dict]) -> pl.DataFrame:
    """The records of :func:`score` as a table (for CSV or Markdown)."""
    schema = {"id": pl.String, "source": pl.String, "url": pl.String, "setup": pl.String, "profile": pl.String,
              "metric": pl.String, "published": pl.Float64, "simulated": pl.Float64, "error_pct": pl.Float64,
              "target_pct": pl.Float64, "met": pl.Boolean, "not_covered": pl.String}  # fmt: skip
    return pl.DataFrame(records, schema=schema)

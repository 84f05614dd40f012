"""Scenarios: everything one run needs, as data (a TOML file or a dict).

A scenario names a workload (a trace file, a synthetic multi-tenant mix, or
the DriftSched experiment's generator), a profile (GPU x model cost model),
engine limits, the gateway policy, per-tenant SLOs and the seed. Parsing is
strict: an unknown key or a wrong type is an error naming the key, so a typo
never silently falls back to a default.

Scenario files are data only: they are parsed by the standard library's
``tomllib`` (nothing in a file is evaluated or imported) and every error is a
:class:`ConfigError` naming the file and the key. A file, with the command
line's overrides merged in, is held to these limits (:data:`LIMITS`):

* the file is at most 1 MiB of UTF-8 TOML, tables and arrays nest at most 16
  deep, an array holds at most 10,000 items and a string at most 4,096
  characters;
* at most 1,000 tenants, in ``[tenants.*]`` and in ``[[workload.tenants]]``;
* every number is finite (no nan or inf) and every integer fits 64 bits;
* ``seed`` is an integer in [0, 2**63); ``replicas`` an integer in [1, 4096];
  ``workload.num_requests`` and ``workload.max_requests`` integers in
  [1, 10**9];
* ``horizon_s``, ``workload.duration_s``, ``slo_ttft_s`` and ``slo_e2e_s``
  are numbers of seconds in (0, 10**9]; ``workload.rate_scale`` a number in
  (0, 10**6]; a tenant's ``priority`` an integer in [-10**6, 10**6];
* names, descriptions, profiles, paths and formats are strings;
* ``vllm bench serve``'s workload (:data:`BENCH_KEYS`): ``kind = "bench"``
  generates it from ``num_prompts``, ``request_rate``, ``burstiness``,
  ``input_len``, ``output_len`` and ``range_ratio`` (integers >= 1; rates and
  burstiness numbers > 0 or the string "inf"; ``range_ratio`` in [0, 1)),
  the tenant mix from ``assign_tenants``; on any other workload
  ``num_prompts`` keeps the first N requests and ``request_rate`` (with
  ``burstiness``) re-times them, and the length keys are refused;
* ``max_concurrency`` (with ``think_s``, seconds >= 0) sends the workload
  through a closed-loop client (:mod:`driftsim.sim.closed_loop`).

Engine, gateway and admission values are checked by their config records
when the scenario is built (:func:`build_engine` and friends).

The embedded default (:data:`DEFAULT_SCENARIO`) is DriftSched's set-up:
three tenants on one NVIDIA L4 serving Qwen1.5-1.8B-Chat behind the
micro-batch worker.
"""

from __future__ import annotations

import copy
import math
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import polars as pl

from driftsim.admission.controller import AdmissionConfig
from driftsim.costmodel.profiles import Profile, ProfileError, load_profile
from driftsim.sim.client import ClientConfig
from driftsim.sim.closed_loop import ClosedLoop, simulate_closed_loop
from driftsim.sim.config import ConfigError, EngineConfig, GatewayConfig
from driftsim.sim.events import Observer
from driftsim.sim.policies import make_policy
from driftsim.sim.run import SimResult, simulate
from driftsim.sim.sessions import simulate_sessions
from driftsim.traces import transform
from driftsim.traces.bench_workload import BenchWorkload, generate_bench, with_arrivals
from driftsim.traces.driftsched import driftsched_workload
from driftsim.traces.loaders import LoadReport, load_trace_with_report
from driftsim.traces.schema import TraceError
from driftsim.traces.synth import LengthDist, TenantLoad, generate

SCENARIO_DIR = Path(__file__).parent / "scenarios"

#: Exceptions that mean bad input to a scenario (a value, a file, a trace or a profile): reported, never retried.
INPUT_ERRORS: tuple[type[BaseException], ...] = (ConfigError, ProfileError, TraceError, ValueError, FileNotFoundError)
DEFAULT_SCENARIO = SCENARIO_DIR / "driftsched.toml"
#: The bundled scenarios, by the name ``--scenario`` accepts in place of a file.
BUNDLED_SCENARIOS: dict[str, Path] = {"driftsched": DEFAULT_SCENARIO, "vllm": SCENARIO_DIR / "vllm.toml",
                                      "chat-agents": SCENARIO_DIR / "chat-agents.toml"}

_TOP_KEYS = {
    "name", "description", "seed", "replicas", "profile", "horizon_s", "workload", "engine", "gateway", "tenants",
    "admission", "client",
}
#: ``vllm bench serve``'s workload flags as ``[workload]`` keys. With ``kind = "bench"`` they generate the
#: workload (:func:`driftsim.traces.bench_workload.generate_bench`); on any other workload ``num_prompts``
#: keeps the first N requests and ``request_rate`` / ``burstiness`` re-time them
#: (:func:`driftsim.traces.bench_workload.with_arrivals`). ``request_rate`` and ``burstiness`` may be "inf".
BENCH_KEYS = ("num_prompts", "request_rate", "burstiness", "input_len", "output_len", "range_ratio")
#: Keys that only shape a generated (``kind = "bench"``) workload.
BENCH_GENERATE_ONLY = ("input_len", "output_len", "range_ratio")
#: The closed-loop client (``vllm bench serve --max-concurrency``), see :mod:`driftsim.sim.closed_loop`.
CLOSED_LOOP_KEYS = ("max_concurrency", "think_s")
_WORKLOAD_KEYS = {
    "kind", "path", "format", "assign_tenants", "assign_method", "rate_scale", "duration_s", "max_requests",
    "tenants", "num_requests", "params", *BENCH_KEYS, *CLOSED_LOOP_KEYS,
}
_TENANT_KEYS = {"priority", "slo_ttft_s", "slo_e2e_s"}

#: What a scenario file may hold at most; see the module docstring.
LIMITS = {
    "file_bytes": 1 << 20,
    "depth": 16,
    "array_items": 10_000,
    "string_chars": 4_096,
    "tenants": 1_000,
    "replicas": 4_096,
    "requests": 10**9,
    "seconds": 1e9,
    "rate_scale": 1e6,
    "priority": 10**6,
}
_INT64 = 2**63


@dataclass
class Scenario:
    """A parsed scenario; ``raw`` keeps the resolved dict for the output folder."""

    name: str
    raw: dict
    source: str | None = None  # the file it was read from, for error messages

    @property
    def seed(self) -> int:
        return int(self.raw.get("seed", 0))


def load_scenario(path: str | Path | None = None, overrides: dict | None = None) -> Scenario:
    """Read a scenario TOML (default: the embedded DriftSched set-up) and apply ``overrides``.

    ``overrides`` is a nested dict merged over the file (what CLI flags set). ``path`` may also
    be a bundled scenario's name (:data:`BUNDLED_SCENARIOS`) when no file of that name exists.
    """
    if path is None:
        path = DEFAULT_SCENARIO
    elif str(path) in BUNDLED_SCENARIOS and not Path(path).exists():
        path = BUNDLED_SCENARIOS[str(path)]
    path = Path(path)
    raw = _merge(read_toml(path, "scenario"), overrides or {})
    check_scenario(raw, str(path))
    return Scenario(name=str(raw.get("name", path.stem)), raw=raw, source=str(path))


def read_toml(path: Path, what: str) -> dict:
    """A TOML file as data (never code), at most ``LIMITS["file_bytes"]``, with one-line errors naming the file."""
    try:
        with path.open("rb") as f:
            data = f.read(LIMITS["file_bytes"] + 1)
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the {what} file: {exc.strerror or exc}") from None
    if len(data) > LIMITS["file_bytes"]:
        raise ConfigError(f"{path}: {what} file larger than {LIMITS['file_bytes']} bytes; a {what} is a short text")
    try:
        return tomllib.loads(data.decode("utf-8-sig"))  # a byte-order mark, as some editors write, is skipped
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); a {what} file is TOML text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid TOML: arrays or tables nested too deep") from None


def check_scenario(raw: dict, where: str) -> None:
    """Hold a scenario dict to the module's rules and :data:`LIMITS`; raise ConfigError naming ``where`` and the key."""
    _check_data(raw, where, "", 0)
    _check_keys(raw, _TOP_KEYS, where)
    for key in ("name", "description", "profile"):
        _typed(raw, key, str, where)
    _int_in(raw, "seed", 0, _INT64 - 1, where)
    _int_in(raw, "replicas", 1, LIMITS["replicas"], where)
    _seconds(raw, "horizon_s", where)
    for key in ("engine", "gateway", "admission", "client"):
        _typed(raw, key, dict, where)
    w = raw.get("workload", {})
    _check_keys(w, _WORKLOAD_KEYS, f"{where} [workload]")
    ww = f"{where} [workload]"
    for key in ("kind", "path", "format", "assign_method"):
        _typed(w, key, str, ww)
    _number_in(w, "rate_scale", LIMITS["rate_scale"], ww)
    _seconds(w, "duration_s", ww)
    _int_in(w, "max_requests", 1, LIMITS["requests"], ww)
    _int_in(w, "num_requests", 1, LIMITS["requests"], ww)
    _typed(w, "params", dict, ww)
    _typed(w, "tenants", list, ww)
    _check_bench_keys(w, ww)
    if len(w.get("tenants", [])) > LIMITS["tenants"]:
        raise ConfigError(f"{ww}: {len(w['tenants'])} tenants; at most {LIMITS['tenants']}")
    if "assign_tenants" in w:
        a = w["assign_tenants"]
        ok = (isinstance(a, list) and all(isinstance(t, str) for t in a)) or (
            isinstance(a, dict) and all(_is_number(v) and v > 0 for v in a.values())
        )
        if not ok or not a:
            raise ConfigError(f"{ww} assign_tenants: expected tenant names, or a table of name = weight > 0")
    _typed(raw, "tenants", dict, where)
    tenants = raw.get("tenants", {})
    if len(tenants) > LIMITS["tenants"]:
        raise ConfigError(f"{where} [tenants]: {len(tenants)} tenants; at most {LIMITS['tenants']}")
    for tenant, table in tenants.items():
        wt = f"{where} [tenants.{tenant}]"
        _check_keys(table, _TENANT_KEYS, wt)
        _int_in(table, "priority", -LIMITS["priority"], LIMITS["priority"], wt)
        _seconds(table, "slo_ttft_s", wt)
        _seconds(table, "slo_e2e_s", wt)


def _check_bench_keys(w: dict, where: str) -> None:
    """The ``vllm bench serve`` keys of ``[workload]``: types and ranges (BenchWorkload checks the rest)."""
    for key in ("num_prompts", "input_len", "output_len"):
        _int_in(w, key, 1, LIMITS["requests"], where)
    for key in ("request_rate", "burstiness"):
        v = w.get(key)
        if v is not None and v != "inf" and not (_is_number(v) and v > 0):
            raise ConfigError(f"{where} {key}: expected a number > 0 or \"inf\", got {v!r:.80}")
    r = w.get("range_ratio")
    if r is not None and not (_is_number(r) and 0 <= r < 1):
        raise ConfigError(f"{where} range_ratio: expected a number in [0, 1), got {r!r:.80}")
    _int_in(w, "max_concurrency", 1, LIMITS["requests"], where)
    t = w.get("think_s")
    if t is not None and not (_is_number(t) and 0 <= t <= LIMITS["seconds"]):
        raise ConfigError(f"{where} think_s: expected a number of seconds in [0, {LIMITS['seconds']:g}], got {t!r:.80}")
    if w.get("request_rate") is not None and w.get("rate_scale", 1.0) != 1.0:
        raise ConfigError(f"{where} request_rate: sets the rate itself; drop rate_scale (a multiplier of the trace's)")
    if "think_s" in w and "max_concurrency" not in w:
        raise ConfigError(f"{where} think_s: the pause before a freed slot is used needs max_concurrency")
    kind = w.get("kind", "trace" if "path" in w else "driftsched")
    misplaced = [k for k in BENCH_GENERATE_ONLY if k in w] if kind != "bench" else []
    if misplaced:
        raise ConfigError(f"{where} {misplaced[0]}: shapes a generated workload (kind = \"bench\"); this workload "
                          f"is kind {kind!r}, whose lengths are its own")


def _check_data(value: Any, where: str, key: str, depth: int) -> None:
    """Limits that hold everywhere in the file: nesting, array and string sizes, finite numbers, 64-bit integers."""
    at = f"{where}: {key or 'the file'}"
    if depth > LIMITS["depth"]:
        raise ConfigError(f"{at}: nested deeper than {LIMITS['depth']} levels")
    if isinstance(value, dict):
        for k, v in value.items():
            if len(k) > LIMITS["string_chars"]:
                raise ConfigError(f"{at}: a key longer than {LIMITS['string_chars']} characters")
            _check_data(v, where, f"{key}.{k}" if key else k, depth + 1)
    elif isinstance(value, list):
        if len(value) > LIMITS["array_items"]:
            raise ConfigError(f"{at}: an array of {len(value)} items; at most {LIMITS['array_items']}")
        for i, v in enumerate(value):
            _check_data(v, where, f"{key}[{i}]", depth + 1)
    elif isinstance(value, str) and len(value) > LIMITS["string_chars"]:
        raise ConfigError(f"{at}: a string of {len(value)} characters; at most {LIMITS['string_chars']}")
    elif isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{at}: expected a finite number, got {value}")
    elif isinstance(value, int) and not isinstance(value, bool) and not -_INT64 <= value < _INT64:
        raise ConfigError(f"{at}: integer {value} does not fit 64 bits")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _typed(table: dict, key: str, kind: type, where: str) -> None:
    if key in table and not isinstance(table[key], kind):
        what = {str: "a string", dict: "a table", list: "an array"}[kind]
        raise ConfigError(f"{where} {key}: expected {what}, got {type(table[key]).__name__} {table[key]!r:.80}")


def _int_in(table: dict, key: str, low: int, high: int, where: str) -> None:
    if key not in table or table[key] is None:
        return
    v = table[key]
    if not isinstance(v, int) or isinstance(v, bool) or not low <= v <= high:
        raise ConfigError(f"{where} {key}: expected an integer in [{low}, {high}], got {v!r:.80}")


def _number_in(table: dict, key: str, high: float, where: str) -> None:
    if key not in table or table[key] is None:
        return
    v = table[key]
    if not _is_number(v) or not 0 < v <= high:
        raise ConfigError(f"{where} {key}: expected a number in (0, {high:g}], got {v!r:.80}")


def _seconds(table: dict, key: str, where: str) -> None:
    _number_in(table, key, LIMITS["seconds"], where)


def _merge(base: dict, over: dict) -> dict:
    """``over`` merged into a copy of ``base``; None values in ``over`` (unset flags) change nothing."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict):
            merged = _merge(out[k] if isinstance(out.get(k), dict) else {}, v)
            if merged or k in out:
                out[k] = merged
        elif v is not None:
            out[k] = v
    return out


def _check_keys(table: Any, allowed: set[str], where: str) -> None:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table, got {type(table).__name__}")
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; expected some of {', '.join(sorted(allowed))}")


# --------------------------------------------------------------------------- building blocks
def build_profile(scenario: Scenario) -> Profile:
    return load_profile(scenario.raw.get("profile", "l4-qwen1.5-1.8b-chat"))


def build_engine(scenario: Scenario, profile: Profile) -> EngineConfig:
    """Engine config: the profile's engine defaults, overridden by the scenario's [engine]."""
    allowed = {f.name for f in fields(EngineConfig)}
    table = dict(scenario.raw.get("engine", {}))
    _check_keys(table, allowed, _where(scenario, "engine"))
    values = {k: v for k, v in profile.engine_defaults.items() if k in allowed}
    values.update(table)
    try:
        return EngineConfig(**values)
    except (TypeError, ConfigError) as exc:  # the record names the field; this adds the file
        raise ConfigError(f"{_where(scenario, 'engine')}: {exc}") from None


def _where(scenario: Scenario, section: str) -> str:
    """Where a scenario's section came from, for error messages: its name, and its file when known."""
    return f"scenario {scenario.name!r}{f' ({scenario.source})' if scenario.source else ''} [{section}]"


def build_gateway(scenario: Scenario) -> GatewayConfig:
    where = _where(scenario, "gateway")
    table = dict(scenario.raw.get("gateway", {}))
    _check_keys(table, {f.name for f in fields(GatewayConfig)}, where)
    for key, kind in (("policy", str), ("policy_params", dict)):
        _typed(table, key, kind, where)
    _int_in(table, "max_outstanding", 1, LIMITS["requests"], where)
    try:
        return GatewayConfig(**table)
    except (TypeError, ConfigError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def build_client(scenario: Scenario) -> ClientConfig | None:
    """``[client]``: timeouts, retries and abandonment (:mod:`driftsim.sim.client`); None without the table."""
    if "client" not in scenario.raw:
        return None
    _check_keys(scenario.raw["client"], {f.name for f in fields(ClientConfig)}, f"scenario {scenario.name!r} [client]")
    return ClientConfig(**scenario.raw["client"])


def build_admission(scenario: Scenario) -> AdmissionConfig:
    where = _where(scenario, "admission")
    table = dict(scenario.raw.get("admission", {}))
    _check_keys(table, {f.name for f in fields(AdmissionConfig)}, where)
    for key in ("alpha", "error_median", "error_sigma"):
        if key in table and not _is_number(table[key]):
            raise ConfigError(f"{where} {key}: expected a number, got {table[key]!r:.80}")
    if "error_per_tenant" in table:
        per = table["error_per_tenant"]
        pairs = isinstance(per, dict) and all(
            isinstance(v, list) and len(v) == 2 and all(_is_number(x) for x in v) for v in per.values()
        )
        if not pairs:
            raise ConfigError(f"{where} error_per_tenant: expected a table of tenant = [median, sigma]")
        table["error_per_tenant"] = {k: tuple(v) for k, v in per.items()}
    try:
        return AdmissionConfig(**table)
    except (TypeError, ConfigError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def build_trace(scenario: Scenario) -> tuple[pl.DataFrame, LoadReport | None]:
    """The request table the scenario describes, with tenants, rate scaling, clipping and SLOs applied."""
    w = scenario.raw.get("workload", {"kind": "driftsched"})
    kind = w.get("kind", "trace" if "path" in w else "driftsched")
    seed = scenario.seed
    report = None
    if kind == "trace":
        if "path" not in w:
            raise ConfigError(f"scenario {scenario.name!r} [workload]: kind 'trace' needs a path")
        df, report = load_trace_with_report(w["path"], w.get("format", "auto"))
    elif kind == "synthetic":
        df = generate(
            [_tenant_load(t, scenario.name) for t in w.get("tenants", [])],
            duration_s=w.get("duration_s"),
            num_requests=w.get("num_requests"),
            seed=seed,
        )
    elif kind == "driftsched":
        try:
            df = driftsched_workload(seed=seed, **w.get("params", {}))
        except TypeError as exc:
            raise ConfigError(f"scenario {scenario.name!r} [workload.params]: {exc}") from None
    elif kind == "bench":
        df = generate_bench(bench_workload(w, seed))
    else:
        raise ConfigError(
            f"scenario {scenario.name!r} [workload]: unknown kind {kind!r}; expected trace, synthetic, driftsched "
            "or bench"
        )
    if kind != "bench":
        df = _bench_over_table(df, w, seed)
    if w.get("assign_tenants") and kind != "bench":
        df = transform.assign_tenants(
            df, w["assign_tenants"], seed=seed, method=w.get("assign_method", "random"), replace=True
        )
    if w.get("rate_scale", 1.0) != 1.0:
        df = transform.scale_rate(df, float(w["rate_scale"]))
    if w.get("duration_s") is not None and kind != "synthetic":
        df = transform.clip_duration(df, float(w["duration_s"]))
    if w.get("max_requests") is not None:
        df = transform.head(df, int(w["max_requests"]))
    tenants = scenario.raw.get("tenants", {})
    present = set(df["tenant"].unique().to_list())
    slos = {t: (v.get("slo_ttft_s"), v.get("slo_e2e_s")) for t, v in tenants.items() if t in present}
    prios = {t: v["priority"] for t, v in tenants.items() if t in present and "priority" in v}
    if slos:
        df = transform.set_slos(df, slos)
    if prios:
        df = transform.set_priorities(df, prios)
    if df.height == 0:
        raise ConfigError(f"scenario {scenario.name!r}: the workload has no requests")
    return df, report


def _rate(v: Any) -> float:
    return math.inf if v == "inf" else float(v)


def bench_workload(w: dict, seed: int) -> BenchWorkload:
    """The ``vllm bench serve`` workload a ``kind = "bench"`` table describes (unset keys: vLLM's defaults);
    ``assign_tenants`` gives the tenant mix."""
    tenants = w.get("assign_tenants") or {"default": 1.0}
    if isinstance(tenants, list):
        tenants = dict.fromkeys(tenants, 1.0)
    given = {k: _rate(w[k]) if k in ("request_rate", "burstiness") else w[k] for k in BENCH_KEYS if k in w}
    return BenchWorkload(**given, tenants=tenants, seed=seed)


def _bench_over_table(df: pl.DataFrame, w: dict, seed: int) -> pl.DataFrame:
    """``num_prompts`` and ``request_rate`` / ``burstiness`` applied to a workload that was not generated from them."""
    if w.get("num_prompts") is not None:
        df = transform.head(df.sort("arrival_s", maintain_order=True), int(w["num_prompts"]))
    if w.get("request_rate") is not None:
        df = with_arrivals(df.sort("arrival_s", maintain_order=True), _rate(w["request_rate"]),
                           _rate(w.get("burstiness", 1.0)), seed)  # fmt: skip
    elif w.get("burstiness") is not None:
        raise ConfigError("workload burstiness: re-times a trace only together with request_rate (the mean rate)")
    return df


def _tenant_load(t: dict, scenario: str) -> TenantLoad:
    where = f"scenario {scenario!r} [[workload.tenants]]"
    if not isinstance(t, dict) or "name" not in t:
        raise ConfigError(f"{where}: each tenant needs a name")
    t = dict(t)
    try:
        t["input"] = LengthDist(**t["input"])
        t["output"] = LengthDist(**t["output"])
        if "turns" in t:
            t["turns"] = LengthDist(**t["turns"])
        if "gap_range" in t:
            t["gap_range"] = tuple(t["gap_range"])
        return TenantLoad(**t)
    except KeyError as exc:
        raise ConfigError(f"{where} {t['name']!r}: missing {exc}") from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where} {t['name']!r}: {exc}") from None


def simulation_setup(scenario: Scenario) -> tuple[dict, dict]:
    """The scenario's engine, gateway, replicas, KV and client as :func:`driftsim.sim.run.simulate` keyword
    arguments, and what a report says of them (admission and trace are the caller's)."""
    profile = build_profile(scenario)
    engine = build_engine(scenario, profile)
    gateway, notes = place_policy(build_gateway(scenario), engine, "placement" in scenario.raw.get("gateway", {}))
    client = build_client(scenario)
    num_blocks = engine.num_gpu_blocks or profile.kv_capacity_blocks(engine.block_size, engine.gpu_memory_utilization)
    run = dict(
        cost=profile.cost_model,
        engine=engine,
        gateway=gateway,
        replicas=int(scenario.raw.get("replicas", 1)),
        num_blocks=num_blocks,
        horizon_s=scenario.raw.get("horizon_s"),
        seed=scenario.seed,
        client=client,
    )
    context = {
        "scenario": scenario.raw,
        "profile": profile.describe(),
        "engine": engine.__dict__,
        "gateway": gateway.__dict__,
        "kv_blocks_per_replica": num_blocks,
        "client": client.__dict__ if client is not None else None,
        "notes": notes,
    }
    return run, context


def place_policy(gateway: GatewayConfig, engine: EngineConfig, placement_given: bool) -> tuple[GatewayConfig, list[str]]:
    """Where the policy acts, so that a named policy always acts; returns the gateway and notes for the user.

    NOTE: a continuous engine with no gateway cap receives every request on
    arrival, so a policy at the gateway never holds anything and orders
    nothing. Unless the scenario sets ``gateway.placement``, a policy other
    than FIFO then orders the engine's waiting queue, as vLLM's
    ``--scheduling-policy priority`` does. A policy with per-tenant state
    (weighted, vtc) has no per-request key to order that queue by: refused,
    naming the cap that lets it act at the gateway. FIFO keeps vLLM's own
    queue (:class:`driftsim.sim.engine.FcfsQueue`).
    """
    uncapped = engine.mode == "continuous" and gateway.max_outstanding is None
    if not uncapped or gateway.placement == "engine" or gateway.policy.lower() == "fifo":
        return gateway, []
    if placement_given:
        return gateway, [
            f"policy {gateway.policy} is placed at the gateway with no cap (gateway.max_outstanding / "
            "--max-outstanding): every request goes to the engine on arrival, so the policy orders nothing "
            "and the engine's queue is FIFO"
        ]
    if not make_policy(gateway.policy, **gateway.policy_params).keyed:
        raise ConfigError(
            f"policy {gateway.policy!r} keeps per-tenant state and cannot order the engine's waiting queue; "
            "give a gateway cap (--max-outstanding N, gateway.max_outstanding) so that it orders requests "
            "at the gateway, or choose a keyed policy (priority, sjf, aging, edf, las, srpt)"
        )
    return replace(gateway, placement="engine"), []


def run_scenario(scenario: Scenario, *, progress=None, oracle_regret: bool = False,
                 observers: Iterable[Observer] | None = None) -> tuple[SimResult, dict]:  # fmt: skip
    """Build everything and simulate; returns the result and a context dict for reports.

    With ``oracle_regret`` the same trace is simulated again with the real
    output lengths as estimates, and ``context["regret"]`` holds the latency
    gap per tenant (this run minus the oracle's). ``observers`` receive the
    engines' and the gateway's events (:mod:`driftsim.sim.events`) of the
    reported run only. A workload with ``max_concurrency`` is sent by a
    closed-loop client (:func:`driftsim.sim.closed_loop.simulate_closed_loop`).
    """
    run, context = simulation_setup(scenario)
    admission = build_admission(scenario)
    context["admission"] = admission.__dict__
    trace, report = build_trace(scenario)
    context["trace_repairs"] = list(report.repairs) if report is not None else []
    context["arrival_span_s"] = float(trace["arrival_s"].max() - trace["arrival_s"].min()) if trace.height > 1 else 0.0
    loop = closed_loop(scenario)
    if loop is not None:
        context["closed_loop"] = {"max_concurrency": loop.max_concurrency, "think_s": loop.think_s}
    result = _simulate(trace, loop, admission=admission, progress=progress, observers=observers, **run)
    if "sessions" in result.summary:  # a turn's row holds its session's start; the offered rate is the sends'
        sent = result.requests["arrival_s"]
        context["arrival_span_s"] = float(sent.max() - sent.min()) if sent.len() > 1 else 0.0
    if oracle_regret:
        oracle = _simulate(trace, loop, admission=AdmissionConfig(estimator="oracle"), **run)
        context["regret"] = regret(result.summary, oracle.summary)
    return result, context


def closed_loop(scenario: Scenario) -> ClosedLoop | None:
    """The scenario's closed-loop client (``[workload] max_concurrency``, ``think_s``); None for open loop."""
    w = scenario.raw.get("workload", {})
    if w.get("max_concurrency") is None:
        return None
    return ClosedLoop(max_concurrency=int(w["max_concurrency"]), think_s=float(w.get("think_s", 0.0)))


def _simulate(trace: pl.DataFrame, loop: ClosedLoop | None, **kwargs) -> SimResult:
    """One open-loop run, or one behind a closed-loop client or multi-turn sessions."""
    sessions = "session_id" in trace.columns and trace["session_id"].null_count() < trace.height
    if sessions and loop is not None:
        raise ConfigError("a workload with multi-turn sessions already sends each turn after the previous answer; "
                          "drop max_concurrency/think_s ([workload] keys or --max-concurrency/--think-s)")
    if sessions:
        return simulate_sessions(trace, **kwargs)
    if loop is not None:
        return simulate_closed_loop(trace, loop, **kwargs)
    return simulate(trace, **kwargs)


def regret(run: dict, oracle: dict) -> dict:
    """Latency gap to the oracle per tenant and overall: seconds (run minus oracle) for E2E and TTFT."""
    out = {}
    for name in [*run["tenants"], "overall"]:
        mine = run["overall"] if name == "overall" else run["tenants"][name]
        best = oracle["overall"] if name == "overall" else oracle["tenants"][name]
        out[name] = {
            f"{m}:{s}": mine[m][s] - best[m][s] for m in ("e2e_s", "ttft_s") for s in ("mean", "p50", "p99")
        }
    return out

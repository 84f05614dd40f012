"""Scenarios: everything one run needs, as data (a TOML file or a dict).

A scenario names a workload (a trace file, a synthetic multi-tenant mix, or
the DriftSched experiment's generator), a profile (GPU x model cost model),
engine limits, the gateway policy, per-tenant SLOs and the seed. Parsing is
strict: an unknown key or a wrong type is an error naming the key, so a typo
never silently falls back to a default. Scenario files are data only.

The embedded default (:data:`DEFAULT_SCENARIO`) is DriftSched's set-up:
three tenants on one NVIDIA L4 serving Qwen1.5-1.8B-Chat behind the
micro-batch worker.
"""

from __future__ import annotations

import copy
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import polars as pl

from costmodel.profiles import Profile, load_profile
from sim.admission import AdmissionConfig
from sim.config import ConfigError, EngineConfig, GatewayConfig
from sim.run import SimResult, simulate
from traces import transform
from traces.loaders import LoadReport, load_trace_with_report
from traces.synth import LengthDist, TenantLoad, generate

SCENARIO_DIR = Path(__file__).parent / "scenarios"
DEFAULT_SCENARIO = SCENARIO_DIR / "driftsched.toml"

_TOP_KEYS = {
    "name", "description", "seed", "replicas", "profile", "horizon_s", "workload", "engine", "gateway", "tenants",
    "admission",
}
_WORKLOAD_KEYS = {
    "kind", "path", "format", "assign_tenants", "assign_method", "rate_scale", "duration_s", "max_requests",
    "tenants", "num_requests", "params",
}
_TENANT_KEYS = {"priority", "slo_ttft_s", "slo_e2e_s"}


@dataclass
class Scenario:
    """A parsed scenario; ``raw`` keeps the resolved dict for the output folder."""

    name: str
    raw: dict

    @property
    def seed(self) -> int:
        return int(self.raw.get("seed", 0))


def load_scenario(path: str | Path | None = None, overrides: dict | None = None) -> Scenario:
    """Read a scenario TOML (default: the embedded DriftSched set-up) and apply ``overrides``.

    ``overrides`` is a nested dict merged over the file (what CLI flags set).
    """
    path = Path(path) if path is not None else DEFAULT_SCENARIO
    raw = _merge(read_toml(path, "scenario"), overrides or {})
    _check_keys(raw, _TOP_KEYS, str(path))
    _check_keys(raw.get("workload", {}), _WORKLOAD_KEYS, f"{path} [workload]")
    for tenant, table in raw.get("tenants", {}).items():
        _check_keys(table, _TENANT_KEYS, f"{path} [tenants.{tenant}]")
    return Scenario(name=str(raw.get("name", path.stem)), raw=raw)


def read_toml(path: Path, what: str) -> dict:
    """A TOML file as data (never code), with one-line errors naming the file."""
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


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
    _check_keys(table, allowed, f"scenario {scenario.name!r} [engine]")
    values = {k: v for k, v in profile.engine_defaults.items() if k in allowed}
    values.update(table)
    try:
        return EngineConfig(**values)
    except TypeError as exc:
        raise ConfigError(f"scenario {scenario.name!r} [engine]: {exc}") from None


def build_gateway(scenario: Scenario) -> GatewayConfig:
    table = dict(scenario.raw.get("gateway", {}))
    _check_keys(table, {f.name for f in fields(GatewayConfig)}, f"scenario {scenario.name!r} [gateway]")
    return GatewayConfig(**table)


def build_admission(scenario: Scenario) -> AdmissionConfig:
    table = dict(scenario.raw.get("admission", {}))
    _check_keys(table, {f.name for f in fields(AdmissionConfig)}, f"scenario {scenario.name!r} [admission]")
    if "error_per_tenant" in table:
        table["error_per_tenant"] = {k: tuple(v) for k, v in table["error_per_tenant"].items()}
    return AdmissionConfig(**table)


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
        from traces.driftsched import driftsched_workload

        try:
            df = driftsched_workload(seed=seed, **w.get("params", {}))
        except TypeError as exc:
            raise ConfigError(f"scenario {scenario.name!r} [workload.params]: {exc}") from None
    else:
        raise ConfigError(
            f"scenario {scenario.name!r} [workload]: unknown kind {kind!r}; expected trace, synthetic or driftsched"
        )
    if w.get("assign_tenants"):
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


def _tenant_load(t: dict, scenario: str) -> TenantLoad:
    where = f"scenario {scenario!r} [[workload.tenants]]"
    if not isinstance(t, dict) or "name" not in t:
        raise ConfigError(f"{where}: each tenant needs a name")
    t = dict(t)
    try:
        t["input"] = LengthDist(**t["input"])
        t["output"] = LengthDist(**t["output"])
        if "gap_range" in t:
            t["gap_range"] = tuple(t["gap_range"])
        return TenantLoad(**t)
    except KeyError as exc:
        raise ConfigError(f"{where} {t['name']!r}: missing {exc}") from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where} {t['name']!r}: {exc}") from None


def run_scenario(scenario: Scenario, *, progress=None, oracle_regret: bool = False) -> tuple[SimResult, dict]:
    """Build everything and simulate; returns the result and a context dict for reports.

    With ``oracle_regret`` the same trace is simulated again with the real
    output lengths as estimates, and ``context["regret"]`` holds the latency
    gap per tenant (this run minus the oracle's).
    """
    profile = build_profile(scenario)
    engine = build_engine(scenario, profile)
    gateway = build_gateway(scenario)
    admission = build_admission(scenario)
    trace, report = build_trace(scenario)
    num_blocks = engine.num_gpu_blocks or profile.kv_capacity_blocks(engine.block_size, engine.gpu_memory_utilization)
    run = dict(
        cost=profile.cost_model,
        engine=engine,
        gateway=gateway,
        replicas=int(scenario.raw.get("replicas", 1)),
        num_blocks=num_blocks,
        horizon_s=scenario.raw.get("horizon_s"),
        seed=scenario.seed,
    )
    result = simulate(trace, admission=admission, progress=progress, **run)
    context = {
        "scenario": scenario.raw,
        "profile": profile.describe(),
        "engine": engine.__dict__,
        "gateway": gateway.__dict__,
        "kv_blocks_per_replica": num_blocks,
        "admission": admission.__dict__,
        "trace_repairs": list(report.repairs) if report is not None else [],
    }
    if oracle_regret:
        oracle = simulate(trace, admission=AdmissionConfig(estimator="oracle"), **run)
        context["regret"] = regret(result.summary, oracle.summary)
    return result, context


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

"""Study inputs shared by ``driftsim sweep`` and ``driftsim plan``: a study TOML file, flags, SLO targets, prices.

A study file (every key optional; flags given on the command line win)::

    scenario = "my.toml"                 # default: the embedded DriftSched set-up
    seeds = [0, 1, 2]
    attainment = 0.99                    # scenario SLOs are checked at this quantile
    criterion = "all"                    # all seeds must pass (or "mean")

    [axes]                               # sweep only: name -> list of values
    rate_scale = [0.5, 1.0, 1.5]
    policy = ["fifo", "sjf"]
    "engine.block_size" = [16, 32]

    [set]                                # fixed overrides for every run (scenario shape)
    workload = { max_requests = 5000 }

    [prices]                             # $ per GPU-hour, by profile
    "a100-llama-3.1-8b" = 1.80

    [slo]                                # "TENANT.METRIC[.pQQ]" = seconds
    "premium.ttft.p99" = 0.5
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from driftsim.capacity.slo import Target, combine, parse_slo, scenario_tenants, targets_from_scenario
from driftsim.capacity.spec import axis_path, merge, parse_assignment, parse_list, parse_seeds, resolve, set_path
from driftsim.sim.config import ConfigError
from driftsim.sim.scenario import read_toml

_KEYS = {"scenario", "seeds", "attainment", "criterion", "axes", "set", "prices", "slo"}


@dataclass
class StudyFile:
    scenario: str | None = None
    seeds: list[int] | None = None
    attainment: float | None = None
    criterion: str | None = None
    axes: dict = field(default_factory=dict)
    fixed: dict = field(default_factory=dict)
    prices: dict = field(default_factory=dict)
    slos: list[Target] = field(default_factory=list)


def read_study(path: str | Path) -> StudyFile:
    """Parse a study TOML strictly (an unknown key is an error naming it)."""
    path = Path(path)
    raw = read_toml(path, "study")
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)}; expected some of {', '.join(sorted(_KEYS))}")
    for key in ("axes", "set", "prices", "slo"):
        if not isinstance(raw.get(key, {}), dict):
            raise ConfigError(f"{path}: [{key}] must be a table")
    seeds = raw.get("seeds")
    if seeds is not None and (not isinstance(seeds, list) or not all(isinstance(s, int) for s in seeds)):
        raise ConfigError(f"{path}: seeds must be a list of integers, got {seeds!r}")
    scenario = raw.get("scenario")
    if scenario is not None:
        p = Path(scenario)
        scenario = str(p if p.is_absolute() or p.exists() else path.parent / p)
    slos = [parse_slo(f"{k}={v}") for k, v in raw.get("slo", {}).items()]
    return StudyFile(
        scenario=scenario, seeds=seeds, attainment=raw.get("attainment"), criterion=raw.get("criterion"),
        axes=dict(raw.get("axes", {})), fixed=dict(raw.get("set", {})), prices=parse_prices_table(raw.get("prices", {}), str(path)),
        slos=slos,
    )  # fmt: skip


def parse_prices(items: list[str] | None) -> dict[str, float]:
    """``['a100-llama-3.1-8b=1.8', ...]`` -> {profile: $/GPU-hour}."""
    out: dict[str, float] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        try:
            usd = float(value)
        except ValueError:
            usd = math.nan
        if not sep or not name.strip() or not (math.isfinite(usd) and usd > 0):
            raise ConfigError(f"--price {item!r}: expected PROFILE=USD_PER_GPU_HOUR with a positive price, e.g. a100-llama-3.1-8b=1.8")
        out[name.strip()] = usd
    return out


def parse_prices_table(table: dict, where: str) -> dict[str, float]:
    return parse_prices([f"{k}={v}" for k, v in table.items()]) if table else {}


def parse_sets(items: list[str] | None) -> dict:
    """``['engine.max_num_seqs=64', 'workload.max_requests=2000']`` -> nested overrides."""
    out: dict = {}
    for item in items or []:
        key, value = parse_assignment(item)
        set_path(out, axis_path(key) if "." not in key else key.split("."), value)
    return out


def prepare_targets(scenario: str | None, fixed: dict, cli: list[Target], attainment: float) -> tuple[list[Target], dict]:
    """The SLO targets to check and the fixed overrides with command-line thresholds written into [tenants].

    Command-line TTFT/E2E thresholds also become the tenants' per-request
    SLOs (``slo_ttft_s``/``slo_e2e_s``), so ``slo_attainment`` in the
    results means the same thing as the targets.
    """
    if not (0 < attainment <= 1):
        raise ConfigError(f"--attainment: expected a fraction in (0, 1], got {attainment}")
    base = resolve(scenario, fixed)
    tenants = scenario_tenants(base)
    targets = combine(targets_from_scenario(base, attainment), cli, tenants or None)
    over: dict = {}
    chosen: dict[tuple[str, str], Target] = {}
    for t in cli:
        if t.metric not in ("ttft_s", "e2e_s") or t.tenant == "overall":
            continue
        for name in tenants if t.tenant == "*" else [t.tenant]:
            prev = chosen.get((name, t.metric))
            rank = lambda x: (x.tenant != "*", x.quantile)  # noqa: E731 - a named tenant beats '*', then the tail
            if prev is None or rank(t) >= rank(prev):
                chosen[(name, t.metric)] = t
    for (name, metric), t in chosen.items():
        set_path(over, ("tenants", name, "slo_ttft_s" if metric == "ttft_s" else "slo_e2e_s"), t.threshold_s)
    return targets, merge(fixed, over)


@dataclass(frozen=True)
class StudyInputs:
    """What ``sweep`` and ``plan`` share, resolved from a study file and the flags (flags win)."""

    scenario: str | None
    fixed: dict
    seeds: list[int]
    targets: list[Target]
    criterion: str
    study: StudyFile


def resolve_study(*, study_path: str | Path | None = None, scenario: str | Path | None = None,
                  sets: list[str] | None = None, seeds: str | None = None, slos: list[str] | None = None,
                  attainment: float | None = None, criterion: str | None = None) -> StudyInputs:  # fmt: skip
    """Scenario, fixed overrides, seeds (default 0, 1, 2), SLO targets and criterion (default ``all``) of a study."""
    study = read_study(study_path) if study_path else StudyFile()
    scen = str(scenario) if scenario is not None else study.scenario
    att = attainment if attainment is not None else (study.attainment if study.attainment is not None else 0.99)
    fixed = merge(study.fixed, parse_sets(sets))
    cli_slos = [*study.slos, *(parse_slo(s, default_quantile=att) for s in slos or [])]
    targets, fixed = prepare_targets(scen, fixed, cli_slos, att)
    if seeds is not None:
        seed_list = parse_seeds(seeds)
    else:
        seed_list = list(study.seeds) if study.seeds is not None else [0, 1, 2]
    return StudyInputs(scenario=scen, fixed=fixed, seeds=seed_list, targets=targets,
                       criterion=criterion or study.criterion or "all", study=study)  # fmt: skip


def sweep_axes(study_axes: dict, named: dict[str, str | None], extra: list[str] | None) -> dict:
    """A sweep's axes: the study file's, then the named axis flags (``{"policy": "fifo,sjf"}``, None = not given),
    then ``KEY=V1,V2`` items; a later one replaces an axis of the same name."""
    axes = dict(study_axes)
    for name, text in named.items():
        if text is not None:
            axes[name] = parse_list(text)
    for item in extra or []:
        key, sep, values = item.partition("=")
        if not sep:
            raise ConfigError(f"--axis {item!r}: expected KEY=V1,V2 (e.g. engine.block_size=16,32)")
        axes[key.strip()] = parse_list(values)
    return axes

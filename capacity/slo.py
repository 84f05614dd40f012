"""SLO targets: what "every tenant meets its SLO" means, measured per run and judged across seeds.

A :class:`Target` is "tenant T's METRIC at quantile q is at most X seconds",
e.g. premium's p99 TTFT <= 0.5 s. It is checked on the per-request results
of a run, where requests that were refused or did not finish count as
infinitely late (a rejected request never meets an SLO). The q-quantile is
the ceil(q*n)-th smallest value (no interpolation), so

    value(q) <= X   exactly when   attainment(X) = share of requests within X >= q,

and the search, the margin in seconds and the attainment always agree.

Targets come from the scenario's ``[tenants.NAME]`` ``slo_ttft_s`` /
``slo_e2e_s`` at a target attainment (default 0.99), or from the command
line as ``TENANT.METRIC[.pQQ]=SECONDS`` (``premium.ttft.p99=0.5``,
``*.e2e.p95=10``; ``*`` is every tenant, ``overall`` all requests together).
A command-line target replaces the scenario's for the same tenant and metric
(``*`` replaces it for every tenant), and a named tenant's own target beats
``*`` for that tenant.

Across seeds a configuration passes under ``criterion="all"`` (default) when
every seed passes, judged on the worst seed; under ``"mean"`` when the mean
over seeds of the quantile passes.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import polars as pl

from driftsim.sim.config import ConfigError

METRICS = {"ttft": "ttft_s", "e2e": "e2e_s", "tpot": "tpot_s", "queue_wait": "queue_wait_s", "wait": "queue_wait_s"}
METRIC_NAMES = {"ttft_s": "TTFT", "e2e_s": "E2E", "tpot_s": "TPOT", "queue_wait_s": "queue wait"}
_SCENARIO_KEYS = {"slo_ttft_s": "ttft_s", "slo_e2e_s": "e2e_s"}
# per request: queue wait <= TTFT <= E2E, so a looser bound on the earlier one can never bind
_ORDER = ("queue_wait_s", "ttft_s", "e2e_s")


@dataclass(frozen=True)
class Target:
    """``tenant``'s ``metric`` (``ttft_s``, ``e2e_s``, ``tpot_s``, ``queue_wait_s``) at ``quantile`` <= ``threshold_s``."""

    tenant: str
    metric: str
    threshold_s: float
    quantile: float = 0.99
    source: str = "cli"

    def __post_init__(self) -> None:
        if self.metric not in METRIC_NAMES:
            raise ConfigError(f"SLO metric {self.metric!r}: expected one of ttft, e2e, tpot, queue_wait")
        if not (isinstance(self.threshold_s, (int, float)) and math.isfinite(self.threshold_s) and self.threshold_s > 0):
            raise ConfigError(f"SLO {self.name}: the threshold must be a finite number of seconds > 0, got {self.threshold_s!r}")
        if not (0 < self.quantile <= 1):
            raise ConfigError(f"SLO {self.name}: the attainment/quantile must be in (0, 1], got {self.quantile!r}")

    @property
    def name(self) -> str:
        return f"{self.tenant} {qname(self.quantile)} {METRIC_NAMES.get(self.metric, self.metric)}"

    def describe(self) -> str:
        return f"{self.name} <= {self.threshold_s:g} s"


def qname(q: float) -> str:
    return f"p{q * 100:g}"


def parse_slo(text: str, *, default_quantile: float = 0.99) -> Target:
    """``'premium.ttft.p99=0.5'`` (or ``premium.ttft=0.5`` at ``default_quantile``) -> a :class:`Target`."""
    key, sep, value = text.partition("=")
    parts = key.strip().split(".")
    q = default_quantile
    if len(parts) >= 3 and re.fullmatch(r"p\d+(\.\d+)?", parts[-1]):
        q = float(parts[-1][1:]) / 100
        parts = parts[:-1]
    if not sep or len(parts) < 2 or not parts[0]:
        raise ConfigError(f"--slo {text!r}: expected TENANT.METRIC[.pQQ]=SECONDS, e.g. premium.ttft.p99=0.5")
    tenant, metric = ".".join(parts[:-1]), parts[-1].lower()
    if metric not in METRICS and metric not in METRIC_NAMES:
        raise ConfigError(f"--slo {text!r}: unknown metric {metric!r}; expected ttft, e2e, tpot or queue_wait")
    try:
        seconds = float(value)
    except ValueError:
        raise ConfigError(f"--slo {text!r}: {value!r} is not a number of seconds") from None
    return Target(tenant=tenant, metric=METRICS.get(metric, metric), threshold_s=seconds, quantile=q, source="cli")


def scenario_tenants(raw: dict) -> list[str]:
    """Tenant names the scenario itself names (its [tenants] table, synthetic tenants, assign_tenants)."""
    names = list(raw.get("tenants", {}))
    w = raw.get("workload", {})
    names += [t.get("name") for t in w.get("tenants", []) if isinstance(t, dict) and t.get("name")]
    names += list(w.get("assign_tenants") or {})
    if w.get("kind", "driftsched" if "path" not in w else "trace") == "driftsched" and not names:
        names += ["premium", "standard", "batch"]
    return list(dict.fromkeys(names))


def targets_from_scenario(raw: dict, attainment: float = 0.99) -> list[Target]:
    """One target per ``[tenants.NAME]`` ``slo_ttft_s`` / ``slo_e2e_s`` (and synthetic tenants' own SLOs), at ``attainment``."""
    out: dict[tuple[str, str], Target] = {}
    w = raw.get("workload", {})
    tables = [(t["name"], t) for t in w.get("tenants", []) if isinstance(t, dict) and "name" in t]
    tables += list(raw.get("tenants", {}).items())  # the [tenants] table wins, as in build_trace
    for tenant, table in tables:
        for key, metric in _SCENARIO_KEYS.items():
            if table.get(key) is not None:
                out[(tenant, metric)] = Target(tenant, metric, float(table[key]), attainment, source="scenario")
    return list(out.values())


def combine(scenario: list[Target], cli: list[Target], known_tenants: list[str] | None = None) -> list[Target]:
    """The targets a plan checks: the scenario's, with command-line ones replacing them per (tenant, metric).

    Raises :class:`ConfigError` on contradictory targets (the same tenant,
    metric and quantile with two thresholds; a bound on an earlier event above
    the bound on a later one, e.g. TTFT 20 s with E2E 10 s) and on a tenant
    the scenario does not have (when ``known_tenants`` is given).
    """
    seen: dict[tuple[str, str, float], Target] = {}
    for t in cli:
        k = (t.tenant, t.metric, t.quantile)
        if k in seen and seen[k].threshold_s != t.threshold_s:
            raise ConfigError(
                f"contradictory SLOs: {t.name} is given as {seen[k].threshold_s:g} s and as {t.threshold_s:g} s; keep one"
            )
        seen[k] = t
    cli = list(seen.values())
    replaced = {(t.tenant, t.metric) for t in cli}
    everyone = {t.metric for t in cli if t.tenant == "*"}
    out = [t for t in scenario if (t.tenant, t.metric) not in replaced and t.metric not in everyone] + cli
    if known_tenants is not None:
        for t in out:
            if t.tenant not in ("*", "overall") and t.tenant not in known_tenants:
                raise ConfigError(f"SLO {t.describe()}: tenant {t.tenant!r} is not in the scenario (tenants: {', '.join(known_tenants)})")
    by_tq: dict[tuple[str, float], dict[str, Target]] = {}
    for t in out:
        by_tq.setdefault((t.tenant, t.quantile), {})[t.metric] = t
    for group in by_tq.values():
        present = [group[m] for m in _ORDER if m in group]
        for early, late in zip(present, present[1:]):
            if early.threshold_s > late.threshold_s:
                raise ConfigError(
                    f"contradictory SLOs: {early.describe()} is looser than {late.describe()}, but every request's "
                    f"{METRIC_NAMES[early.metric]} comes before its {METRIC_NAMES[late.metric]}, so it can never bind; "
                    f"lower it to at most {late.threshold_s:g} s or drop it"
                )
    return out


# --------------------------------------------------------------------------- per run (in the worker)
def evaluate(requests: pl.DataFrame, targets: tuple[Target, ...] | list[Target]) -> list[dict]:
    """Each target checked on one run's per-request table: value at its quantile and attainment.

    ``*`` expands to every tenant in the run. A tenant with no requests in
    the run gets NaN (and fails).
    """
    if not targets:
        return []
    tenants = sorted(requests["tenant"].unique().to_list())
    named = {(t.tenant, t.metric) for t in targets if t.tenant != "*"}
    out = []
    for t in targets:
        # '*' is every tenant that has no target of its own for this metric
        for tenant in [x for x in tenants if (x, t.metric) not in named] if t.tenant == "*" else [t.tenant]:
            part = requests if tenant == "overall" else requests.filter(pl.col("tenant") == tenant)
            value, attainment, n = tail_value(part, t.metric, t.quantile, t.threshold_s)
            out.append({
                "tenant": tenant, "metric": t.metric, "quantile": t.quantile, "threshold_s": t.threshold_s,
                "value_s": value, "attainment": attainment, "requests": n, "source": t.source,
            })  # fmt: skip
    return out


def tail_value(part: pl.DataFrame, metric: str, q: float, threshold: float) -> tuple[float, float, int]:
    """(ceil(q n)-th smallest value with misses as +inf, share within ``threshold``, n)."""
    ok = part["status"] == "ok"
    vals = part.filter(ok)[metric]
    if metric == "tpot_s":
        vals = vals.drop_nulls()  # one-token outputs have no TPOT; they neither meet nor miss it
    else:
        vals = vals.fill_null(math.inf)
    x = np.sort(vals.fill_nan(math.inf).to_numpy())
    misses = int((~ok).sum())
    n = x.size + misses
    if n == 0:
        return math.nan, math.nan, 0
    k = math.ceil(q * n - 1e-9)
    value = float(x[k - 1]) if k <= x.size else math.inf
    attainment = float(np.searchsorted(x, threshold, side="right")) / n
    return value, attainment, n


# --------------------------------------------------------------------------- across seeds (on the driver)
@dataclass
class Check:
    """One target for one tenant, judged across the seeds of a configuration."""

    tenant: str
    metric: str
    quantile: float
    threshold_s: float
    value_s: float  # the worst seed's (criterion "all") or the mean over seeds ("mean")
    attainment: float  # the lowest seed's, or the mean
    seeds: int
    passed: bool

    @property
    def margin(self) -> float:
        """(threshold - value) / threshold: > 0 is headroom, < 0 how far over (-inf: requests refused or unfinished)."""
        if math.isnan(self.value_s):
            return -math.inf
        return (self.threshold_s - self.value_s) / self.threshold_s

    @property
    def name(self) -> str:
        return f"{self.tenant} {qname(self.quantile)} {METRIC_NAMES.get(self.metric, self.metric)}"

    def describe(self) -> str:
        """'premium p99 TTFT 0.84 s > 0.5 s SLO (68 % over; 95.1 % within, target 99 %)'."""
        within = f"{self.attainment:.1%} of requests within it, target {self.quantile:.0%}".replace(".0%", "%")
        if math.isnan(self.value_s):
            return f"{self.name}: no requests of tenant {self.tenant!r} in these runs"
        if math.isinf(self.value_s):
            return (
                f"{self.name} is unbounded against {self.threshold_s:g} s: more than {1 - self.quantile:.0%} of its "
                f"requests were refused or unfinished ({within})"
            )
        if self.passed:
            return f"{self.name} {self.value_s:.3g} s <= {self.threshold_s:g} s ({self.margin:.0%} headroom; {within})"
        return f"{self.name} {self.value_s:.3g} s > {self.threshold_s:g} s SLO ({-self.margin:.0%} over; {within})"


@dataclass
class Verdict:
    """Whether a configuration meets every target, and its binding (least-margin) check."""

    checks: list[Check]

    @property
    def feasible(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    @property
    def binding(self) -> Check | None:
        return min(self.checks, key=lambda c: (c.margin, c.attainment - c.quantile)) if self.checks else None

    @property
    def failed(self) -> list[Check]:
        return sorted((c for c in self.checks if not c.passed), key=lambda c: c.margin)

    @property
    def margin(self) -> float:
        b = self.binding
        return b.margin if b is not None else math.nan


def judge(per_seed: list[list[dict]], criterion: str = "all") -> Verdict:
    """Combine each seed's evaluated targets (:func:`evaluate` output) into one :class:`Verdict`."""
    if criterion not in ("all", "mean"):
        raise ConfigError(f"criterion: expected 'all' or 'mean', got {criterion!r}")
    groups: dict[tuple, list[dict]] = {}
    for checks in per_seed:
        for c in checks:
            groups.setdefault((c["tenant"], c["metric"], c["quantile"], c["threshold_s"]), []).append(c)
    out = []
    for (tenant, metric, q, thr), cs in groups.items():
        vals = np.array([c["value_s"] for c in cs], dtype=float)
        att = np.array([c["attainment"] for c in cs], dtype=float)
        if np.isnan(vals).any():
            value, attainment = math.nan, math.nan
        elif criterion == "all":
            value, attainment = float(vals.max()), float(att.min())
        else:
            value, attainment = float(vals.mean()), float(att.mean())
        passed = not math.isnan(value) and value <= thr
        out.append(Check(tenant, metric, q, thr, value, attainment, len(cs), passed))
    out.sort(key=lambda c: (c.tenant == "overall", c.tenant, _ORDER.index(c.metric) if c.metric in _ORDER else 9))
    return Verdict(out)

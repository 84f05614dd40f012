"""Inverse questions answered by search: fewest replicas, highest load, cheapest GPU mix, best policy.

Every question shares a :class:`Study` (base scenario, fixed overrides,
seeds, SLO targets, criterion). A *probe* is one configuration run at every
seed; its :class:`~driftsim.capacity.slo.Verdict` says whether every target holds
(worst seed, by default) and which target binds. The searches assume the
obvious monotonicity (more replicas or less load never hurt a tenant's
tail); the supporting probes are kept and printed, so a violation would be
visible in the table.

- :func:`min_replicas`: galloping (1, 2, 4, ...) up to ``max_replicas``,
  then binary search between the last failure and the first success.
- :func:`max_load`: doubling/halving ``rate_scale`` from ``start`` to
  bracket the limit, then geometric bisection to a relative ``tolerance``.
- :func:`cheapest_mix`: pools (replicas per profile, each 0..max_per_type)
  in order of $/hour; a pool at or below a failed one (componentwise) is
  skipped, the first that passes is the cheapest (evaluated in parallel
  batches, cheapest first). Mixed pools use the runner's sub-pool split
  approximation (see :mod:`driftsim.capacity.runner`).
- :func:`best_policy`: every policy at every seed; the winner maximises the
  lowest per-tenant SLO attainment (mean over seeds), then minimises the
  mean overall E2E.

No configuration within the bounds passing raises :class:`Infeasible`,
whose message names the failing tenant, metric and gap at the largest
configuration tried.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable

import numpy as np
import polars as pl

from driftsim.capacity.pool import Pool
from driftsim.capacity.results import ResultSet
from driftsim.capacity.runner import RunOutcome
from driftsim.capacity.slo import Target, Verdict, judge
from driftsim.capacity.spec import RunSpec, check_specs, fmt_value, label_of, make_spec, resolve
from driftsim.costmodel.profiles import load_profile
from driftsim.sim.config import ConfigError
from driftsim.sim.policies import POLICIES

#: Progress callback: runs done, runs expected in all (an estimate for searches), label of the last run.
Progress = Callable[[int, int, str], None]


class PlanError(ConfigError):
    """A plan could not be carried out (a run failed, nothing to compare)."""


class Infeasible(PlanError):
    """No configuration within the bounds meets every target; ``result`` holds the probes that show it."""

    def __init__(self, message: str, result: PlanResult) -> None:
        super().__init__(message)
        self.result = result


@dataclass
class Study:
    scenario: str | None = None
    fixed: dict = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    targets: list[Target] = field(default_factory=list)
    criterion: str = "all"

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ConfigError("seeds: a plan needs at least one seed")
        if self.criterion not in ("all", "mean"):
            raise ConfigError(f"--criterion: expected 'all' or 'mean', got {self.criterion!r}")


@dataclass
class Probe:
    params: dict
    outcomes: list[RunOutcome]
    verdict: Verdict
    extra: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        return label_of(self.params)

    @property
    def feasible(self) -> bool:
        return self.verdict.feasible

    def mean(self, column: str, tenant: str = "overall") -> float:
        vals = [r[column] for o in self.outcomes for r in o.rows if r["tenant"] == tenant]
        vals = [v for v in vals if v is not None and not (isinstance(v, float) and math.isnan(v))]
        return float(np.mean(vals)) if vals else math.nan


@dataclass
class PlanResult:
    question: str
    answer: dict
    headline: str
    verdict: Verdict | None
    probes: list[Probe]
    notes: list[str] = field(default_factory=list)
    best: Probe | None = None

    def table(self) -> pl.DataFrame:
        """One row per probe: its parameters, whether it passed, the binding target and margin, and extras."""
        rows = []
        for p in self.probes:
            b = p.verdict.binding
            row = {k: fmt_value(v) if isinstance(v, dict) else v for k, v in p.params.items()}
            row.update(p.extra)
            row.update(
                seeds=len(p.outcomes), passes=p.feasible,
                binding=b.name if b else None, value_s=b.value_s if b else None,
                slo_s=b.threshold_s if b else None, margin=b.margin if b else None,
                attainment=b.attainment if b else None, chosen=p is self.best,
            )  # fmt: skip
            rows.append(row)
        return pl.DataFrame(rows, infer_schema_length=None)

    def result_set(self, meta: dict | None = None, prices: dict | None = None) -> ResultSet:
        outs = [o for p in self.probes for o in p.outcomes]
        return ResultSet.from_outcomes(outs, meta=dict(meta or {}, plan=self.to_dict()), prices=prices)

    def to_dict(self) -> dict:
        v = self.verdict
        return {
            "question": self.question, "answer": self.answer, "headline": self.headline, "notes": self.notes,
            "margin": v.margin if v else None, "binding": v.binding.describe() if v and v.binding else None,
            "probes": self.table().to_dicts(),
        }  # fmt: skip


class Planner:
    """Runs probes through a pool, numbering runs uniquely and reporting progress."""

    def __init__(self, study: Study, pool: Pool, progress: Progress | None = None) -> None:
        self.study, self.pool, self.progress = study, pool, progress
        self.probes: list[Probe] = []
        self.done = 0
        self.expected = 0
        self._next = 0
        self._cache: dict[str, Probe] = {}

    def expect(self, more_probes: int) -> None:
        """Tell the progress bar how many more probes are likely (an estimate)."""
        self.expected = self.done + max(0, more_probes) * len(self.study.seeds)

    def _tick(self, out: RunOutcome) -> None:
        self.done += 1
        self.expected = max(self.expected, self.done)
        if self.progress:
            self.progress(self.done, self.expected, out.label)

    def run(self, param_list: list[dict], options: dict | None = None) -> list[Probe]:
        """Probe each parameter set at every seed (all in one parallel batch); cached by label."""
        todo = [p for p in param_list if label_of(p) not in self._cache]
        specs = []
        for params in todo:
            for k, seed in enumerate(self.study.seeds):
                opts = dict(options or {})
                if k == 0:
                    opts.update(timeseries=True, cdf=True)
                specs.append(make_spec(self._next, self.study.scenario, self.study.fixed, dict(params, seed=seed),
                                       targets=tuple(self.study.targets), options=opts))
                self._next += 1
        if specs:
            check_specs(specs)
            self.expected = max(self.expected, self.done + len(specs))
            outcomes = self.pool.run(specs, on_result=self._tick)
            bad = [o for o in outcomes if not o.ok]
            if bad:
                raise PlanError(f"run {bad[0].label!r} failed: {bad[0].error}")
            n = len(self.study.seeds)
            for i, params in enumerate(todo):
                outs = outcomes[i * n : (i + 1) * n]
                probe = Probe(params, outs, judge([o.checks for o in outs], self.study.criterion))
                self._cache[label_of(params)] = probe
                self.probes.append(probe)
        return [self._cache[label_of(p)] for p in param_list]

    def probe(self, params: dict) -> Probe:
        return self.run([params])[0]


def _need_targets(study: Study) -> None:
    if not study.targets:
        raise PlanError(
            "no SLO to plan for: the scenario's tenants set no slo_ttft_s/slo_e2e_s and no --slo was given "
            "(e.g. --slo premium.ttft.p99=0.5 --slo '*.e2e.p99=10')"
        )


def _failures(probe: Probe) -> str:
    return "; ".join(c.describe() for c in probe.verdict.failed) or "no target evaluated"


# --------------------------------------------------------------------------- fewest replicas
def min_replicas(study: Study, pool: Pool, *, max_replicas: int = 16, min_replicas: int = 1,
                 progress: Progress | None = None) -> PlanResult:  # fmt: skip
    """The fewest replicas (of the scenario's profile) such that every target holds."""
    _need_targets(study)
    if not 1 <= min_replicas <= max_replicas:
        raise PlanError(f"replica bounds: need 1 <= --min-replicas <= --max-replicas, got {min_replicas} and {max_replicas}")
    pl_ = Planner(study, pool, progress)
    bad, good, n = min_replicas - 1, None, min_replicas
    steps = lambda lo, hi: max(1, math.ceil(math.log2(max(hi / max(lo, 1), 2)))) + 1  # noqa: E731
    while good is None:
        pl_.expect(steps(n, max_replicas) + steps(1, max(n, 2)))
        if pl_.probe({"replicas": n}).feasible:
            good = n
        elif n >= max_replicas:
            last = pl_.probe({"replicas": n})
            res = PlanResult("replicas", {}, "infeasible", last.verdict, pl_.probes, best=None)
            raise Infeasible(
                f"no replica count up to {max_replicas} meets every SLO; at {n} replicas: {_failures(last)}", res
            )
        else:
            bad, n = n, min(2 * n, max_replicas)
    while good - bad > 1:
        pl_.expect(math.ceil(math.log2(good - bad)))
        mid = (bad + good) // 2
        if pl_.probe({"replicas": mid}).feasible:
            good = mid
        else:
            bad = mid
    best = pl_.probe({"replicas": good})
    notes = []
    if bad >= 1:
        notes.append(f"with {bad} replica{'s' if bad > 1 else ''}: {_failures(pl_.probe({'replicas': bad}))}")
    pl_.probes.sort(key=lambda p: p.params["replicas"])
    return PlanResult("replicas", {"replicas": good}, f"{good} replica{'s' if good > 1 else ''}", best.verdict,
                      pl_.probes, notes, best)  # fmt: skip


# --------------------------------------------------------------------------- highest load
def max_load(study: Study, pool: Pool, *, start: float = 1.0, min_scale: float = 1 / 64, max_scale: float = 64.0,
             tolerance: float = 0.02, progress: Progress | None = None) -> PlanResult:  # fmt: skip
    """The highest ``rate_scale`` (within ``tolerance``, relative) at which every target holds."""
    _need_targets(study)
    if not (0 < min_scale <= start <= max_scale) or not (0 < tolerance < 1):
        raise PlanError(
            f"load bounds: need 0 < --min-scale <= --start <= --max-scale and 0 < --tolerance < 1, "
            f"got {min_scale}, {start}, {max_scale}, {tolerance}"
        )
    pl_ = Planner(study, pool, progress)
    bisect_steps = math.ceil(math.log2(math.log(2) / math.log1p(tolerance)))
    f = lambda s: pl_.probe({"rate_scale": float(s)})  # noqa: E731
    pl_.expect(3 + bisect_steps)
    first = f(start)
    lo = hi = None
    notes: list[str] = []
    def walk(factor: float):
        """Double (factor 2) or halve (factor 1/2) the load until feasibility flips; None at the bound."""
        s, last = start, first
        while True:
            s *= factor
            if not (min_scale <= s <= max_scale):
                return None, last, s
            pl_.expect(2 + bisect_steps)
            p = f(s)
            if p.feasible != first.feasible:
                return p, last, s
            last = p

    if first.feasible:
        hi, lo, s = walk(2.0)
        if hi is None:
            notes.append(f"still meets every SLO at the upper bound --max-scale {max_scale:g}; the limit may be higher")
    else:
        lo, hi, s = walk(0.5)
        if lo is None:
            res = PlanResult("load", {}, "infeasible", hi.verdict, pl_.probes)
            raise Infeasible(f"no load down to rate scale {s / 0.5:g} meets every SLO; there: {_failures(hi)}", res)
    while hi is not None and hi.params["rate_scale"] / lo.params["rate_scale"] - 1 > tolerance:
        a, b = lo.params["rate_scale"], hi.params["rate_scale"]
        pl_.expect(math.ceil(math.log2(math.log(b / a) / math.log1p(tolerance))))
        p = f(float(f"{math.sqrt(a * b):.6g}"))
        if p.feasible:
            lo = p
        else:
            hi = p
    scale = lo.params["rate_scale"]
    rps = lo.mean("offered_rps")
    if hi is not None:
        notes.append(f"at rate scale {hi.params['rate_scale']:g} ({hi.mean('offered_rps'):.3g} requests/s): {_failures(hi)}")
    pl_.probes.sort(key=lambda p: p.params["rate_scale"])
    for p in pl_.probes:
        p.extra["offered_rps"] = p.mean("offered_rps")
    return PlanResult("load", {"rate_scale": scale, "offered_rps": rps},
                      f"rate scale {scale:g} ({rps:.3g} requests/s offered)", lo.verdict, pl_.probes, notes, lo)  # fmt: skip


# --------------------------------------------------------------------------- cheapest GPU mix
def cheapest_mix(study: Study, pool: Pool, prices: dict[str, float], *, max_per_type: int = 4,
                 max_total: int | None = None, compare_homogeneous: bool = True,
                 progress: Progress | None = None) -> PlanResult:  # fmt: skip
    """The cheapest pool (replicas per profile) meeting every target, given $/GPU-hour per profile.
    A replica of a tensor-parallel profile costs its GPUs (``tensor_parallel_size`` x the price)."""
    _need_targets(study)
    profiles = _checked_mix_profiles(prices, max_per_type)
    pl_ = Planner(study, pool, progress)
    replica_prices = {p: usd * _gpus_per_replica(p) for p, usd in prices.items()}
    space = _MixSpace(profiles=profiles, prices=replica_prices, caps=_replica_capacities(study, pool, profiles))
    cands = [v for v in itertools.product(range(max_per_type + 1), repeat=len(profiles)) if any(v)]
    if max_total is not None:
        cands = [v for v in cands if sum(v) <= max_total]
    cands.sort(key=lambda v: (round(space.price(v), 9), sum(v), tuple(-x for x in v)))
    passed, failed = _cheapest_passing(pl_, space, cands, batch=max(1, pool.workers // len(study.seeds)))
    if not passed:
        biggest = max(pl_.probes, key=lambda p: p.extra.get("capacity_tokens_per_s", 0))
        res = PlanResult("gpu-mix", {}, "infeasible", biggest.verdict, pl_.probes)
        raise Infeasible(
            f"no pool with at most {max_per_type} replicas per type meets every SLO; the largest tried "
            f"({fmt_value(biggest.params['pool'])}): {_failures(biggest)}", res,
        )  # fmt: skip
    v = min(passed, key=lambda v: (round(space.price(v), 9), sum(v)))
    best = pl_.run([space.as_params(v)], space.options)[0]
    notes = [
        "capacity of one replica on this workload (output tokens/s at saturation): "
        + ", ".join(f"{p} {space.caps[p]:,.0f}" for p in profiles),
        "mixed pools are simulated as homogeneous sub-pools over a capacity-weighted split of the trace "
        "(pessimistic: a real router pools the load; see CAPACITY.md)",
    ]
    if compare_homogeneous and len(profiles) > 1:
        notes.append(_homogeneous_note(pl_, space, v, failed, max_per_type))
    pl_.probes.sort(key=lambda p: p.extra.get("usd_per_hour", 0))
    answer = {"pool": {p: n for p, n in zip(profiles, v)}, "usd_per_hour": space.price(v)}
    head = " + ".join(f"{n} x {p}" for p, n in zip(profiles, v) if n) + f" at ${space.price(v):.2f}/h"
    return PlanResult("gpu-mix", answer, head, best.verdict, pl_.probes, notes, best)


def _checked_mix_profiles(prices: dict[str, float], max_per_type: int) -> list[str]:
    """The priced profiles, checked: positive prices, at least one replica per type, one model served."""
    if not prices:
        raise PlanError("a GPU mix needs prices: --price PROFILE=USD_PER_GPU_HOUR for each GPU type to consider")
    for p, usd in prices.items():
        if not (isinstance(usd, (int, float)) and math.isfinite(usd) and usd > 0):
            raise PlanError(f"--price {p}: expected a positive $/GPU-hour, got {usd!r}")
    if max_per_type < 1:
        raise PlanError(f"--max-per-type: expected at least 1, got {max_per_type}")
    profiles = list(prices)
    models = {p: load_profile(p).model.name for p in profiles}
    if len(set(models.values())) > 1:
        raise PlanError(
            "a GPU mix serves one model, but these profiles model different ones: "
            + ", ".join(f"{p} ({m})" for p, m in models.items())
        )
    return profiles


def _gpus_per_replica(profile: str) -> int:
    """GPUs one replica of ``profile`` occupies: its tensor-parallel group (1 unless the profile says)."""
    return int(load_profile(profile).engine_defaults.get("tensor_parallel_size", 1))


def _replica_capacities(study: Study, pool: Pool, profiles: list[str]) -> dict[str, float]:
    """One replica's capacity per profile on this workload: the weights that split the trace across sub-pools."""
    cap_specs = []
    for i, p in enumerate(profiles):
        raw = resolve(study.scenario, dict(study.fixed, profile=p, seed=study.seeds[0]))
        cap_specs.append(RunSpec(index=-1 - i, label=f"capacity {p}", config=f"capacity {p}", params={"profile": p},
                                 overrides={}, scenario=raw, options={"measure_capacity": True}))  # fmt: skip
    caps = {}
    for out in pool.run(cap_specs):
        if not out.ok:
            raise PlanError(f"measuring {out.params['profile']}'s capacity failed: {out.error}")
        caps[out.params["profile"]] = out.extra["output_tokens_per_s"]
    return caps


@dataclass(frozen=True)
class _MixSpace:
    """The pools a GPU-mix search ranges over: a pool is a tuple of replicas per profile, in ``profiles`` order."""

    profiles: list[str]
    prices: dict[str, float]
    caps: dict[str, float]

    @property
    def options(self) -> dict:
        return {"capacity": self.caps}

    def price(self, v: tuple) -> float:
        return sum(n * self.prices[p] for p, n in zip(self.profiles, v))

    def as_params(self, v: tuple) -> dict:
        return {"pool": {p: n for p, n in zip(self.profiles, v) if n}}


def _dominated(v: tuple, failed: list[tuple]) -> bool:
    """Whether ``v`` has no more of any GPU than a pool that already failed (so it fails too)."""
    return any(all(a <= b for a, b in zip(v, f)) for f in failed)


def _cheapest_passing(pl_: Planner, space: _MixSpace, cands: list[tuple], *, batch: int) -> tuple[list[tuple], list[tuple]]:
    """Probe candidates cheapest first, ``batch`` at a time, until a batch has a pool that passes; (passed, failed)."""
    failed: list[tuple] = []
    passed: list[tuple] = []
    i = 0
    while i < len(cands) and not passed:
        chunk = []
        while i < len(cands) and len(chunk) < batch:
            v = cands[i]
            i += 1
            if not _dominated(v, failed):
                chunk.append(v)
        if not chunk:
            continue
        pl_.expect(len(chunk) + 2)
        for v, probe in zip(chunk, pl_.run([space.as_params(v) for v in chunk], space.options)):
            probe.extra.update(usd_per_hour=space.price(v),
                               capacity_tokens_per_s=sum(n * space.caps[p] for p, n in zip(space.profiles, v)))
            (passed if probe.feasible else failed).append(v)
    return passed, failed


def _homogeneous_note(pl_: Planner, space: _MixSpace, v: tuple, failed: list[tuple], max_per_type: int) -> str:
    """The cheapest single-type pool per profile (smallest count that passes), compared with the mix ``v``."""
    profiles = space.profiles
    homo = []
    for k, p in enumerate(profiles):
        unit = [0] * len(profiles)
        ns = []
        for n in range(1, max_per_type + 1):
            unit[k] = n
            if not _dominated(unit, failed):
                ns.append(tuple(unit))
        for u in ns:  # smallest count first; stop at the first that passes
            probe = pl_.run([space.as_params(u)], space.options)[0]
            probe.extra.update(usd_per_hour=space.price(u), capacity_tokens_per_s=u[k] * space.caps[p])
            if probe.feasible:
                homo.append((space.price(u), p, u[k]))
                break
            failed.append(u)
    if not homo:
        return f"no single-type pool of at most {max_per_type} replicas meets every SLO"
    usd, p, n = min(homo)
    if sum(1 for x in v if x) == 1:
        return "the cheapest pool found is a single GPU type; no mix is cheaper within the bounds"
    return f"cheapest single-type pool: {n} x {p} at ${usd:.2f}/h; the mix saves {1 - space.price(v) / usd:.0%}"


# --------------------------------------------------------------------------- best policy
def best_policy(study: Study, pool: Pool, *, policies: list[str] | None = None,
                progress: Progress | None = None) -> PlanResult:  # fmt: skip
    """The policy maximising the lowest per-tenant SLO attainment (mean over seeds), then the lowest mean E2E."""
    policies = list(policies or POLICIES)
    if not policies:
        raise PlanError("--policies: no policy to compare")
    unknown = [p for p in policies if p.lower() not in POLICIES]
    if unknown:
        raise PlanError(f"unknown policy {unknown[0]!r}; known: {', '.join(sorted(POLICIES))}")
    pl_ = Planner(study, pool, progress)
    probes = pl_.run([{"policy": p} for p in policies])
    scored = []
    for p in probes:
        tenants = sorted({r["tenant"] for o in p.outcomes for r in o.rows if r["tenant"] != "overall" and r["slo_requests"] > 0})
        att = {t: p.mean("slo_attainment", t) for t in tenants}
        if not att:
            raise PlanError(
                "no tenant has an SLO, so there is no attainment to compare: set slo_ttft_s/slo_e2e_s in "
                "[tenants.NAME] or give --slo TENANT.ttft=SECONDS"
            )
        worst = min(att, key=att.get)
        p.extra.update({f"attainment {t}": a for t, a in att.items()})
        p.extra.update(min_attainment=att[worst], worst_tenant=worst, e2e_mean_s=p.mean("e2e_s_mean"))
        scored.append(p)
    scored.sort(key=lambda p: (-p.extra["min_attainment"], p.extra["e2e_mean_s"]))
    best = scored[0]
    notes = []
    if len(scored) > 1:
        second = scored[1]
        gap = best.extra["min_attainment"] - second.extra["min_attainment"]
        if gap == 0 and best.extra["e2e_mean_s"] == second.extra["e2e_mean_s"]:
            notes.append(
                f"runner-up {second.params['policy']} ties on both criteria (same lowest attainment and mean E2E): "
                "the policy makes no difference to this workload as configured"
            )
        else:
            notes.append(
                f"runner-up {second.params['policy']}: lowest attainment {second.extra['min_attainment']:.1%} "
                f"({second.extra['worst_tenant']}), {gap * 100:.1f} points below"
                + (f"; tie broken by mean E2E {best.extra['e2e_mean_s']:.3g} s vs {second.extra['e2e_mean_s']:.3g} s" if gap == 0 else "")
            )
    if study.targets:
        ok = [p.params["policy"] for p in scored if p.feasible]
        notes.append(f"policies meeting every target: {', '.join(ok) if ok else 'none'}")
    pl_.probes = scored
    e = best.extra
    head = f"{best.params['policy']} (lowest tenant attainment {e['min_attainment']:.1%}, {e['worst_tenant']}; mean E2E {e['e2e_mean_s']:.3g} s)"
    return PlanResult("policy", {"policy": best.params["policy"], "min_attainment": e["min_attainment"]}, head,
                      best.verdict, scored, notes, best)  # fmt: skip


# --------------------------------------------------------------------------- one call per question
@dataclass(frozen=True)
class PlanRun:
    """A finished search: its result (the probes that show it when infeasible), the Infeasible raised if any,
    the results folder's tables and the search's wall time (s)."""

    question: str
    result: PlanResult
    infeasible: Infeasible | None
    result_set: ResultSet
    wall_s: float


def run_plan(question: str, search: Callable[..., PlanResult], study: Study, pool: Pool, *,
             progress: Progress | None = None, **kwargs) -> PlanRun:  # fmt: skip
    """Start ``pool``, answer ``question`` with ``search`` (``min_replicas``, ``max_load``, ``cheapest_mix``,
    ``best_policy``; ``kwargs`` are its bounds), stop the pool and gather every run into a ResultSet.

    An infeasible question is an answer too: it comes back in ``infeasible``,
    its probes in the result set. Bad input raises as ``search`` does.
    """
    t0 = time.perf_counter()
    infeasible = None
    with pool:
        try:
            result = search(study, pool, progress=progress, **kwargs)
        except Infeasible as exc:
            infeasible, result = exc, exc.result
    wall = time.perf_counter() - t0
    scen = study.scenario
    meta = {
        "command": f"plan {question}", "scenario": scen, "scenario_name": Path(scen).stem if scen else "driftsched",
        "seeds": study.seeds, "fixed": study.fixed, "targets": [t.__dict__ for t in study.targets],
        "criterion": study.criterion, "executor": pool.describe(), "wall_s": wall,
        "created": datetime.now().isoformat(timespec="seconds"),
    }  # fmt: skip
    rs = result.result_set(meta=dict(meta, runs=sum(len(p.outcomes) for p in result.probes)), prices=kwargs.get("prices"))
    return PlanRun(question=question, result=result, infeasible=infeasible, result_set=rs, wall_s=wall)

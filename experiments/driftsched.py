"""The DriftSched paper's experiment grid, run in simulation.

The paper runs every scheduler against the same two-phase client
(learning, drain, stress) with both token counters and calibration on and
off, on one L4. This module runs that grid on the embedded default
scenario (the L4 / Qwen1.5-1.8B-Chat profile behind the micro-batch
worker, batch 32, wait 10 ms) and collects one tidy table, plus the
per-request data of one seed and the calibrator's bias history that the
plots need. :mod:`driftsim.experiments.headline` turns it into the numbers the
paper reports; :mod:`driftsim.experiments.report` into an HTML report.

Protocol, as in the original client (see :mod:`driftsim.traces.driftsched`):

1. For each seed the workload is generated once (``driftsched_workload``
   via the scenario, so the scenario's tier SLOs are attached).
2. For each policy x calibration x counter, the learning phase is
   simulated alone to find when its queue drains; the stress phase then
   starts ``phase_gap_s`` (15 s) after that drain, as the original client
   waits for an empty queue plus 15 s. The drain depends on the run's
   policy (SJF forms shorter batches), so it is measured per run. With
   ``pause="fixed"`` the generator's fixed gap after the last learning
   arrival is used instead (the stress phase then lands on a backlog).
3. The full trace is simulated with the policy at the gateway in front of
   the micro-batch worker and ``AdmissionConfig(estimator="driftsched",
   counter=..., calibration=...)``.

Token counting. ``counter="whitespace"`` counts prompt words and observes
outputs in words (about 0.75 per token). ``counter="tokenizer"`` with no
``tokenizer_path`` uses the trace's own ``input_tokens`` for the prompt
(which the generator counts with ``split()``, so prompt lengths are words
in both variants; the prompts are 12-24 words, so ``input_factor = 1 +
len / 1000`` moves by a few tenths of a percent to 2 %) and the real
output tokens for the feedback. With a
``tokenizer_path`` the trace's prompt lengths are recounted with it once
per seed, for the engine and the tokenizer variant alike (the admission
then reads them from the trace: the same numbers its own
``TokenizerCounter`` would give, without reloading the tokenizer for each
of the runs).
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import polars as pl

from driftsim.admission.controller import AdmissionConfig
from driftsim.admission.calibration import mae_rmse
from driftsim.costmodel.profiles import Profile
from driftsim.sim.config import ConfigError, EngineConfig, GatewayConfig
from driftsim.traces.tokens import TokenizerCounter
from driftsim.experiments.fairness import jain_index
from driftsim.experiments.headline import compute_headline, headline_rows
from driftsim.experiments.result import OVERALL, ExperimentResult
from driftsim.sim.run import SimResult, simulate
from driftsim.sim.scenario import Scenario, build_engine, build_gateway, build_profile, build_trace, load_scenario
from driftsim.traces.driftsched import driftsched_workload

POLICIES: tuple[str, ...] = ("fifo", "priority", "weighted", "sjf", "aging")
#: Policies run again with the oracle and the learned estimator (FIFO as the control: its order ignores estimates).
BEYOND_POLICIES: tuple[str, ...] = ("fifo", "sjf")
BEYOND_ESTIMATORS: tuple[str, ...] = ("oracle", "learned")
COUNTERS: tuple[str, ...] = ("whitespace", "tokenizer")

#: Columns kept per request for the representative seed (what the plots read).
REQUEST_COLUMNS: tuple[str, ...] = (
    "request_id", "tenant", "status", "category", "arrival_s", "scheduled_s", "finish_s", "queue_wait_s", "e2e_s",
    "est_output", "observed_output", "est_bias", "job_size", "true_job_size",
)  # fmt: skip

#: Progress callback: runs done, runs in total, label of the run just finished.
Progress = Callable[[int, int, str], None]

_WORKLOAD_DEFAULTS = {
    name: p.default for name, p in inspect.signature(driftsched_workload).parameters.items() if p.default is not p.empty
}


class _CachedCounter:
    """A tokenizer counter with a memo: each seed's prompts are recounted once, not once per run."""

    def __init__(self, counter: TokenizerCounter) -> None:
        self._counter = counter
        self._memo: dict[str, int] = {}

    def count(self, text: str) -> int:
        n = self._memo.get(text)
        if n is None:
            n = self._memo[text] = self._counter.count(text)
        return n


def run_driftsched_experiment(
    *,
    seeds: Sequence[int] = (0, 1, 2),
    policies: Sequence[str] = POLICIES,
    counters: Sequence[str] = COUNTERS,
    calibration: Sequence[bool] = (False, True),
    tokenizer_path: str | Path | None = None,
    progress: Progress | None = None,
    workload_params: Mapping | None = None,
    pause: str = "drain",
    scenario: str | Path | None = None,
) -> ExperimentResult:
    """Run the paper's grid: seeds x policies x calibration x counters, one simulation each.

    ``workload_params`` go to :func:`driftsim.traces.driftsched.driftsched_workload`
    (e.g. ``n_learning=100, n_stress=200`` for a quick run). ``pause`` is
    ``"drain"`` (the original client's protocol, see the module docstring)
    or ``"fixed"``. ``scenario`` is a scenario file whose workload is the
    DriftSched generator (default: the embedded one). Deterministic: the
    same arguments give the same tables.
    """
    params = _checked_workload_params(seeds, policies, counters, calibration, pause, workload_params)
    wp = {**_WORKLOAD_DEFAULTS, **params}
    phases = _Phases(
        n_learning=int(wp["n_learning"]), n_stress=int(wp["n_stress"]), phase_gap_s=float(wp["phase_gap_s"]),
        pause=pause, params=params, scenario=scenario,
        counter=_CachedCounter(TokenizerCounter(tokenizer_path)) if tokenizer_path is not None else None,
    )  # fmt: skip
    setup = _GridSetup.from_scenario(scenario)
    configs = [(p, c, cal) for p in policies for cal in calibration for c in counters]
    beyond = [(p, e) for p in policies if p in BEYOND_POLICIES for e in BEYOND_ESTIMATORS]
    total = len(seeds) * (len(configs) + len(beyond))
    out = _Collected(rep_seed=int(seeds[0]), n_learning=phases.n_learning)
    t0 = time.perf_counter()
    for seed in seeds:
        seed = int(seed)
        trace = _trace(scenario, seed, params, phases.counter)
        if seed == out.rep_seed:
            out.prompt_range = [int(trace["input_tokens"].min()), int(trace["input_tokens"].max())]
        runs = [(p, "driftsched", c, cal) for p, c, cal in configs] + [(p, e, "tokenizer", False) for p, e in beyond]
        for policy, estimator, ctr, cal in runs:
            label = _run_one(setup, phases, out, trace, seed=seed, policy=policy, estimator=estimator, counter=ctr, cal=cal)
            out.done += 1
            if progress is not None:
                progress(out.done, total, label)

    meta = {
        "seeds": [int(s) for s in seeds],
        "policies": list(policies),
        "counters": list(counters),
        "calibration": [bool(c) for c in calibration],
        "representative_seed": out.rep_seed,
        "runs": total,
        "wall_s": time.perf_counter() - t0,
        "pause": pause,
        "phase_gap_s": phases.phase_gap_s,
        "workload_params": params,
        "n_learning": phases.n_learning,
        "n_stress": phases.n_stress,
        "tokenizer_path": _str(tokenizer_path),
        "prompt_length_range": out.prompt_range,
        **setup.meta(),
    }
    result = out.result(meta)
    result.headline = compute_headline(result)
    return result


def _checked_workload_params(seeds, policies, counters, calibration, pause: str, workload_params: Mapping | None) -> dict:
    """The grid's arguments checked; the workload overrides as a plain dict."""
    if not seeds or not policies or not counters or not calibration:
        raise ValueError("seeds, policies, counters and calibration must each name at least one value")
    if pause not in ("drain", "fixed"):
        raise ValueError(f"pause: expected 'drain' or 'fixed', got {pause!r}")
    params = dict(workload_params or {})
    if pause == "drain" and "stress_start_s" in params:
        raise ValueError("workload_params.stress_start_s conflicts with pause='drain' (which sets it); use pause='fixed'")
    unknown = sorted(set(params) - set(_WORKLOAD_DEFAULTS))
    if unknown:
        raise ValueError(f"workload_params: unknown key(s) {', '.join(unknown)}")
    return params


@dataclass(frozen=True)
class _Phases:
    """How the two phases are laid out: sizes, the gap between them, and how phase 2's start is found."""

    n_learning: int
    n_stress: int
    phase_gap_s: float
    pause: str
    params: dict
    scenario: str | Path | None
    counter: _CachedCounter | None

    def stress_timing(self, trace: pl.DataFrame, seed: int, run: dict) -> tuple[pl.DataFrame, float, float]:
        """The trace to run, the learning phase's drain (s, NaN unless measured) and phase 2's start (s)."""
        drain_s = stress_start_s = math.nan
        if self.pause == "drain" and self.n_learning > 0 and self.n_stress > 0:
            drain_s = _learning_drain_s(trace, self.n_learning, run)
            stress_start_s = drain_s + self.phase_gap_s
            return _trace(self.scenario, seed, {**self.params, "stress_start_s": stress_start_s}, self.counter), drain_s, stress_start_s
        if self.n_learning > 0 and self.n_stress > 0:  # fixed: where the generator put phase 2's first gap
            last = float(trace.filter(pl.col("request_id") < self.n_learning)["arrival_s"].max())
            given = self.params.get("stress_start_s")
            stress_start_s = max(float(given), last) if given is not None else last + self.phase_gap_s
        return trace, drain_s, stress_start_s


@dataclass(frozen=True)
class _GridSetup:
    """What every run of the grid shares: the scenario's profile, engine, gateway and simulate() arguments."""

    name: str
    profile: Profile
    engine: EngineConfig
    num_blocks: int
    gateway: GatewayConfig
    common: dict

    @classmethod
    def from_scenario(cls, scenario: str | Path | None) -> _GridSetup:
        base = load_scenario(scenario)
        kind = base.raw.get("workload", {}).get("kind", "driftsched")
        if kind != "driftsched":
            raise ConfigError(f"scenario {base.name!r}: the DriftSched experiment needs workload kind 'driftsched', got {kind!r}")
        profile = build_profile(base)
        engine = build_engine(base, profile)
        num_blocks = engine.num_gpu_blocks or profile.kv_capacity_blocks(engine.block_size, engine.gpu_memory_utilization)
        common = dict(
            cost=profile.cost_model, engine=engine, replicas=int(base.raw.get("replicas", 1)),
            num_blocks=num_blocks, horizon_s=base.raw.get("horizon_s"),
        )  # fmt: skip
        return cls(name=base.name, profile=profile, engine=engine, num_blocks=num_blocks, gateway=build_gateway(base), common=common)

    def run_args(self, *, policy: str, admission: AdmissionConfig, seed: int) -> dict:
        """simulate()'s keyword arguments for one run: the policy at the gateway, this admission, this seed."""
        gateway = replace(self.gateway, policy=policy, placement="gateway", policy_params={})
        return dict(self.common, gateway=gateway, admission=admission, seed=seed)

    def meta(self) -> dict:
        engine = self.engine
        return {
            "scenario": self.name,
            "profile": self.profile.name,
            "profile_source": (self.profile.provenance or {}).get("source", "unknown"),
            "engine": {
                "mode": engine.mode, "batch_size": engine.batch_size, "batch_wait_s": engine.batch_wait_s,
                "max_model_len": engine.max_model_len, "kv_blocks": self.num_blocks,
            },  # fmt: skip
        }


@dataclass
class _Collected:
    """The grid's rows and per-request parts as the runs finish."""

    rep_seed: int
    n_learning: int
    done: int = 0
    rows: list[dict] = field(default_factory=list)
    beyond_rows: list[dict] = field(default_factory=list)
    request_parts: list[pl.DataFrame] = field(default_factory=list)
    history_parts: list[pl.DataFrame] = field(default_factory=list)
    bias_rows: list[dict] = field(default_factory=list)
    prompt_range: list[int] = field(default_factory=list)

    def add_paper_run(self, res: SimResult, key: dict, drain_s: float, stress_start_s: float) -> None:
        """One run of the paper's grid: its rows, its final bias, and the representative seed's per-request parts."""
        self.rows.extend(_rows(res, key, drain_s, stress_start_s))
        if key["calibration"]:
            self.bias_rows.extend(dict(key, category=k, bias=float(v)) for k, v in res.summary["estimation"].get("final_bias", {}).items())
        if key["seed"] == self.rep_seed:
            self.request_parts.append(_request_part(res, key, self.n_learning))
            hist = getattr(res, "calibration_history", None)
            if key["calibration"] and hist is not None:
                self.history_parts.append(hist.with_columns(**{k: pl.lit(v) for k, v in key.items()}))

    def result(self, meta: dict) -> ExperimentResult:
        return ExperimentResult(
            table=pl.DataFrame(self.rows),
            requests=pl.concat(self.request_parts, how="vertical") if self.request_parts else pl.DataFrame(),
            bias_history=_concat_or_empty(self.history_parts),
            final_bias=pl.DataFrame(self.bias_rows, schema=_FINAL_BIAS_SCHEMA),
            meta=meta,
            beyond=pl.DataFrame(self.beyond_rows),
        )


def _run_one(setup: _GridSetup, phases: _Phases, out: _Collected, trace: pl.DataFrame, *, seed: int, policy: str,
             estimator: str, counter: str, cal: bool) -> str:  # fmt: skip
    """Simulate one run of the grid into ``out``; returns its progress label."""
    # NOTE: no tokenizer_path here: the trace's prompt lengths are already this tokenizer's counts (recounted once
    # per seed by _trace), which is what the admission would compute, without reloading the tokenizer per run.
    admission = AdmissionConfig(estimator=estimator, counter=counter, calibration=cal)
    run = setup.run_args(policy=policy, admission=admission, seed=seed)
    run_trace, drain_s, stress_start_s = phases.stress_timing(trace, seed, run)
    res = simulate(run_trace, **run)
    if estimator != "driftsched":
        out.beyond_rows.extend(_rows(res, dict(seed=seed, policy=policy, estimator=estimator), drain_s, stress_start_s))
        return f"seed {seed} {policy} {estimator} estimator"
    out.add_paper_run(res, dict(seed=seed, policy=policy, counter=counter, calibration=cal), drain_s, stress_start_s)
    return f"seed {seed} {policy} {counter} calibration {'on' if cal else 'off'}"


_FINAL_BIAS_SCHEMA = {
    "seed": pl.Int64, "policy": pl.String, "counter": pl.String, "calibration": pl.Boolean,
    "category": pl.String, "bias": pl.Float64,
}  # fmt: skip
_HISTORY_SCHEMA = {
    "time_s": pl.Float64, "key": pl.String, "bias": pl.Float64, "seed": pl.Int64, "policy": pl.String,
    "counter": pl.String, "calibration": pl.Boolean,
}  # fmt: skip


def _str(path: str | Path | None) -> str | None:
    return None if path is None else str(path)


def _concat_or_empty(parts: list[pl.DataFrame]) -> pl.DataFrame:
    if not parts:
        return pl.DataFrame(schema=_HISTORY_SCHEMA)
    return pl.concat([p.select(list(_HISTORY_SCHEMA)).cast(_HISTORY_SCHEMA) for p in parts], how="vertical")


def _trace(scenario: str | Path | None, seed: int, params: dict, counter: _CachedCounter | None) -> pl.DataFrame:
    """The scenario's DriftSched trace for ``seed`` (with its tier SLOs), prompts recounted if a tokenizer is given."""
    sc: Scenario = load_scenario(scenario, {"seed": seed, "workload": {"params": params}})
    trace, _ = build_trace(sc)
    if counter is not None:
        counts = [max(1, counter.count(p)) for p in trace["prompt"].to_list()]
        trace = trace.with_columns(input_tokens=pl.Series(counts, dtype=pl.Int64))
    return trace


def _learning_drain_s(trace: pl.DataFrame, n_learning: int, run: dict) -> float:
    """When the learning phase alone leaves the system empty (its last completion), seconds.

    NOTE: the original polls the queue every 2 s before its 15 s pause;
    that granularity is not modelled.
    """
    learn = trace.filter(pl.col("request_id") < n_learning)
    res = simulate(learn, **run)
    finish = res.requests["finish_s"].drop_nans().drop_nulls()
    return float(finish.max()) if finish.len() else float(learn["arrival_s"].max())


def _estimation(part: pl.DataFrame) -> dict:
    """MAE, RMSE, relative MAE and job-size misclassification of completed requests (counter units)."""
    done = part.filter(pl.col("observed_output").is_not_null())
    if done.height == 0:
        return {"mae": math.nan, "rmse": math.nan, "rel_mae": math.nan, "misclassification": math.nan}
    est, obs = done["est_output"].to_numpy(), done["observed_output"].to_numpy()
    mae, rmse = mae_rmse(est, obs)
    mean_obs = float(obs.mean())
    wrong = (done["job_size"] != done["true_job_size"]).mean()  # None for the oracle, which sizes nothing
    return {
        "mae": mae,
        "rmse": rmse,
        "rel_mae": mae / mean_obs if mean_obs > 0 else math.nan,
        "misclassification": math.nan if wrong is None else float(wrong),
    }


def _rows(res: SimResult, key: dict, drain_s: float, stress_start_s: float) -> list[dict]:
    """Tidy rows of one run: one per tenant plus ``overall``; run-level columns repeated on each."""
    s = res.summary
    tenants = sorted(s["tenants"])
    jain = jain_index(s["tenants"][t]["e2e_s"]["mean"] for t in tenants)
    req = res.requests
    out = []
    for name in [*tenants, OVERALL]:
        g = s["overall"] if name == OVERALL else s["tenants"][name]
        part = req if name == OVERALL else req.filter(pl.col("tenant") == name)
        row = dict(key, tenant=name, requests=g["requests"], completed=g["completed"])
        for metric, label in (("e2e_s", "e2e"), ("queue_wait_s", "queue_wait")):
            for stat in ("mean", "p50", "p90", "p99"):
                row[f"{label}_{stat}_s"] = g[metric][stat]
        row["throughput_rps"] = g["throughput_rps"]
        row["slo_attainment"] = g["slo_attainment"]
        row.update(_estimation(part))
        row.update(
            jain_e2e=jain, span_s=s["span_s"], busy_fraction=s["busy_fraction"],
            learning_drain_s=drain_s, stress_start_s=stress_start_s,
        )  # fmt: skip
        out.append(row)
    return out


def _request_part(res: SimResult, key: dict, n_learning: int) -> pl.DataFrame:
    """The per-request columns the plots read, tagged with the run's key and phase."""
    cols = [c for c in REQUEST_COLUMNS if c in res.requests.columns]
    return res.requests.select(cols).with_columns(
        pl.when(pl.col("request_id") < n_learning).then(pl.lit("learning")).otherwise(pl.lit("stress")).alias("phase"),
        **{k: pl.lit(v) for k, v in key.items()},
    )


def headline_table(result: ExperimentResult, *, tolerance_pts: float = 10.0) -> list[dict]:
    """Rows ``{metric, paper, driftsim, unit, note}`` comparing driftsim with the paper (see :mod:`driftsim.experiments.headline`)."""
    return headline_rows(result, tolerance_pts=tolerance_pts)

"""Scoring a simulated replay against its real run, and the target bounds it is judged by.

:func:`compare` pairs the two and scores them: per metric (TTFT, TPOT, ITL,
E2E, queue wait), overall and per tenant, mean / p50 / p90 / p99 for real
and sim and the relative error ``(sim - real) / real``; per-request paired
errors; SLO attainment and fairness on both sides. Given several real runs
of the same trace, :func:`spread` is the real engine's own run-to-run
spread: the noise floor no simulator can beat. :func:`aggregate` combines
repeats and :func:`target_check` judges them against :data:`TARGETS`.

Latencies on both sides are measured from the *real* release time, so a
difference is the simulator's error and nothing else (the simulator's
clock runs ``overhead_s`` ahead for dispatches, see :func:`latencies`):
``queue_wait = dispatch - released``, ``ttft = first token - released``,
``e2e = delivered - released`` (delivered = last token, or the batch's end
for the micro-batch worker), ``tpot = (last token - first token) / (n - 1)``,
ITL = every gap between consecutive tokens of a request (pooled).
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl

#: Metrics scored, in report order (seconds).
METRICS = ("ttft_s", "tpot_s", "itl_s", "e2e_s", "queue_wait_s")
METRIC_LABELS = {"ttft_s": "TTFT", "tpot_s": "TPOT", "itl_s": "ITL", "e2e_s": "E2E", "queue_wait_s": "queue wait"}
STATS = ("mean", "p50", "p90", "p99")
_Q = {"p50": 0.5, "p90": 0.9, "p99": 0.99}
OVERALL = "overall"

#: Bootstrap over requests of each overall statistic's error: resamples, two-sided level, seed (fixed, so
#: the same replays always give the same interval).
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_LEVEL = 0.95
BOOTSTRAP_SEED = 0

#: Target bounds: the |relative error| of (metric, statistic), overall, the simulator should stay within.
TARGETS: dict[tuple[str, str], float] = {
    ("e2e_s", "p50"): 0.05,
    ("e2e_s", "p99"): 0.10,
    ("ttft_s", "p50"): 0.10,
    ("ttft_s", "p99"): 0.15,
    ("tpot_s", "p50"): 0.05,
    ("itl_s", "p50"): 0.05,
}


def latencies(frame: pl.DataFrame, released: pl.DataFrame, *, shift_s: float = 0.0) -> pl.DataFrame:
    """Per-request latencies from event times, measured from the real release time.

    ``frame`` has ``request_id``, ``status``, ``dispatch_s``, ``first_token_s``,
    ``finish_s``, ``delivered_s``, ``n_tokens`` and ``token_times``; its times
    are taken ``- shift_s`` (the simulator's clock runs ``overhead_s`` ahead of
    the client's for dispatches, see :func:`driftsim.validation.replay_sim.sim_trace`). ``released`` maps
    ``request_id`` to ``released_s`` and ``tenant``.
    """
    df = frame.join(released, on="request_id", how="inner")
    ok = pl.col("status") == "ok"
    return df.select(
        "request_id", "tenant", "status",
        pl.when(ok).then(pl.col("dispatch_s") - shift_s - pl.col("released_s")).alias("queue_wait_s"),
        pl.when(ok).then(pl.col("first_token_s") - pl.col("released_s")).alias("ttft_s"),
        pl.when(ok).then(pl.col("delivered_s") - pl.col("released_s")).alias("e2e_s"),
        pl.when(ok & (pl.col("n_tokens") > 1))
        .then((pl.col("finish_s") - pl.col("first_token_s")) / (pl.col("n_tokens") - 1)).alias("tpot_s"),
        pl.when(ok).then(pl.col("token_times").list.diff(null_behavior="drop")).alias("itls"),
    )


def real_latencies(real: pl.DataFrame) -> pl.DataFrame:
    """:func:`latencies` of a real replay frame."""
    frame = real.select("request_id", "status", pl.col("sent_s").alias("dispatch_s"), "first_token_s", "finish_s",
                        "delivered_s", pl.col("completion_tokens").alias("n_tokens"), "token_times")
    return latencies(frame, real.select("request_id", "released_s", "tenant"))


def sim_latencies(sim: pl.DataFrame, real: pl.DataFrame, *, overhead_s: float = 0.0) -> pl.DataFrame:
    """:func:`latencies` of a simulated replay, from the real release times."""
    frame = sim.select("request_id", pl.col("status").cast(pl.String), "dispatch_s", "first_token_s", "finish_s",
                       "delivered_s", pl.col("generated_tokens").alias("n_tokens"), "token_times")
    return latencies(frame, real.select("request_id", "released_s", "tenant"), shift_s=overhead_s)


def _stats(x: np.ndarray) -> dict[str, float]:
    x = x[np.isfinite(x)]
    if x.size == 0:
        return {s: math.nan for s in STATS}
    return {"mean": float(x.mean()), **{k: float(np.quantile(x, q)) for k, q in _Q.items()}}


def metric_values(lat: pl.DataFrame, metric: str, ids: set[int] | None = None) -> np.ndarray:
    """All values of ``metric`` over completed requests (ITL: every gap, pooled), optionally only ``ids``."""
    df = lat.filter(pl.col("status") == "ok")
    if ids is not None:
        df = df.filter(pl.col("request_id").is_in(list(ids)))
    if metric == "itl_s":
        s = df["itls"].drop_nulls().explode().drop_nulls()
        return s.to_numpy().astype(np.float64) if s.len() else np.empty(0)
    return df[metric].drop_nulls().to_numpy().astype(np.float64)


#: Latencies both under this are taken as equal, their relative error as undefined: the real gateway's
#: own hand-off takes a few tenths of a millisecond (a capped gateway's queue wait at load 0.3 measured
#: 0.33-0.36 ms at p50 where the simulated one is 0), and a relative error of that is -100 %, which
#: says nothing about the simulator.
TIME_RESOLUTION_S = 1e-3


def _boot_stats(values: np.ndarray, idx: np.ndarray) -> dict[str, np.ndarray]:
    """Each statistic of ``values[idx[b]]`` for every resample ``b`` (rows of ``idx``)."""
    v = values[idx]
    return {"mean": v.mean(axis=1), **{k: np.quantile(v, q, axis=1) for k, q in _Q.items()}}


def _boot_itl_stats(gaps: list[np.ndarray], idx: np.ndarray) -> dict[str, np.ndarray]:
    """The statistics of the pooled token gaps of the resampled requests, per resample."""
    out = {k: np.empty(len(idx)) for k in STATS}
    for b, rows in enumerate(idx):
        v = np.concatenate([gaps[i] for i in rows])
        if v.size == 0:
            for k in STATS:
                out[k][b] = math.nan
            continue
        out["mean"][b] = v.mean()
        for k, q in _Q.items():
            out[k][b] = np.quantile(v, q)
    return out


def _boot_interval(sim: np.ndarray, real: np.ndarray) -> dict[str, float]:
    """Central :data:`BOOTSTRAP_LEVEL` interval of the resampled relative errors (NaN when most are undefined,
    by :func:`rel_err`'s rule)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        err = (sim - real) / np.abs(real)
    undefined = (real == 0) | ((np.abs(real) < TIME_RESOLUTION_S) & (np.abs(sim) < TIME_RESOLUTION_S))
    err = err[~undefined & np.isfinite(err)]
    if err.size < len(sim) / 2:
        return {"err_lo": math.nan, "err_hi": math.nan}
    tail = (1 - BOOTSTRAP_LEVEL) / 2
    return {"err_lo": float(np.quantile(err, tail)), "err_hi": float(np.quantile(err, 1 - tail))}


def bootstrap_errors(rl: pl.DataFrame, sl: pl.DataFrame, ids: set[int], *,
                     resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> dict:
    """Interval of each statistic's relative error ``(sim - real) / real`` from resampling the compared
    requests with replacement (the same requests on both sides, so the pairing is kept):
    ``{metric: {stat: {"err_lo", "err_hi"}}}``. A statistic of a few hundred requests (a p99 above all)
    moves with which requests happened to be sent; an error inside this interval's reach of zero is not
    told apart from that sampling noise. Requests whose metric is missing on either side are left out of
    that metric's resamples. Deterministic: one seeded generator per call."""
    pair = (rl.join(sl, on="request_id", suffix="_sim").filter(pl.col("request_id").is_in(list(ids)))
            .sort("request_id"))
    n = pair.height
    out: dict[str, dict] = {}
    nan = {k: {"err_lo": math.nan, "err_hi": math.nan} for k in STATS}
    if n < 2:
        return {m: dict(nan) for m in METRICS}
    idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    for m in METRICS:
        if m == "itl_s":
            gr = [np.asarray(x if x is not None else [], dtype=np.float64) for x in pair["itls"].to_list()]
            gs = [np.asarray(x if x is not None else [], dtype=np.float64) for x in pair["itls_sim"].to_list()]
            r, s = _boot_itl_stats(gr, idx), _boot_itl_stats(gs, idx)
        else:
            rv = pair[m].cast(pl.Float64).fill_null(math.nan).to_numpy()
            sv = pair[f"{m}_sim"].cast(pl.Float64).fill_null(math.nan).to_numpy()
            keep = np.flatnonzero(np.isfinite(rv) & np.isfinite(sv))
            if keep.size < 2:
                out[m] = dict(nan)
                continue
            sub = np.random.default_rng(seed).integers(0, keep.size, size=(resamples, keep.size))
            r, s = _boot_stats(rv[keep], sub), _boot_stats(sv[keep], sub)
        out[m] = {k: _boot_interval(s[k], r[k]) for k in STATS}
    return out


def rel_err(sim: float, real: float, *, floor: float = 0.0) -> float:
    """``(sim - real) / real``; NaN when undefined: ``real`` is 0, or both are below ``floor``."""
    if real is None or sim is None or not math.isfinite(real) or not math.isfinite(sim) or real == 0:
        return math.nan
    if abs(real) < floor and abs(sim) < floor:
        return math.nan
    return (sim - real) / abs(real)


def jain(values: list[float]) -> float:
    """Jain's fairness index of positive values: 1 = equal, 1/n = one takes all."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if v.size == 0 or not (v ** 2).sum() > 0:
        return math.nan
    return float(v.sum() ** 2 / (v.size * (v ** 2).sum()))


def _slo(lat: pl.DataFrame, trace: pl.DataFrame) -> pl.DataFrame:
    """Per-request SLO met (null where the request has no SLO); unfinished requests with an SLO miss it."""
    df = lat.join(trace.select("request_id", "slo_ttft_s", "slo_e2e_s"), on="request_id", how="left")
    ok = pl.col("status") == "ok"
    has = pl.col("slo_ttft_s").is_not_null() | pl.col("slo_e2e_s").is_not_null()
    met = (ok & (pl.col("slo_ttft_s").is_null() | (pl.col("ttft_s") <= pl.col("slo_ttft_s")))
           & (pl.col("slo_e2e_s").is_null() | (pl.col("e2e_s") <= pl.col("slo_e2e_s"))))
    return df.select("request_id", "tenant", pl.when(has).then(met).alias("slo_met"))


def compare(real: pl.DataFrame, sim: pl.DataFrame, trace: pl.DataFrame, *, overhead_s: float = 0.0) -> dict:
    """Score one simulated replay against its real run.

    Only requests that completed on *both* sides are compared (the others are
    counted). Returns a JSON-ready dict::

        {"requests": {...counts...},
         "groups": {group: {metric: {stat: {"real", "sim", "err"}}}},   # group: "overall" or a tenant
         "paired": {metric: {"median_abs", "p90_abs", "mean_signed", "n"}},  # per-request (sim-real)/real
         "slo": {group: {"real", "sim", "diff_pts"}},
         "fairness": {"jain_e2e_mean": {"real", "sim"}, "jain_slowdown": {...}}}
    """
    rl = real_latencies(real)
    sl = sim_latencies(sim, real, overhead_s=overhead_s)
    ok_r = set(rl.filter(pl.col("status") == "ok")["request_id"].to_list())
    ok_s = set(sl.filter(pl.col("status") == "ok")["request_id"].to_list())
    both = ok_r & ok_s
    tenants = sorted(set(real["tenant"].to_list()))
    groups: dict[str, dict] = {}
    for g in [OVERALL, *tenants]:
        ids = both if g == OVERALL else both & set(real.filter(pl.col("tenant") == g)["request_id"].to_list())
        per = {}
        for m in METRICS:
            r = _stats(metric_values(rl, m, ids))
            s = _stats(metric_values(sl, m, ids))
            per[m] = {k: {"real": r[k], "sim": s[k], "err": rel_err(s[k], r[k], floor=TIME_RESOLUTION_S)}
                      for k in STATS}
        if g == OVERALL:
            for m, per_stat in bootstrap_errors(rl, sl, ids).items():
                for k, interval in per_stat.items():
                    per[m][k].update(interval)
        per["requests"] = len(ids)
        groups[g] = per
    paired = {}
    pair = rl.join(sl, on="request_id", suffix="_sim").filter(pl.col("request_id").is_in(list(both)))
    for m in ("ttft_s", "tpot_s", "e2e_s", "queue_wait_s"):
        r = pair[m].to_numpy().astype(np.float64)
        s = pair[f"{m}_sim"].to_numpy().astype(np.float64)
        sel = (np.isfinite(r) & np.isfinite(s) & (np.abs(r) > 0)
               & ((np.abs(r) >= TIME_RESOLUTION_S) | (np.abs(s) >= TIME_RESOLUTION_S)))
        e = (s[sel] - r[sel]) / np.abs(r[sel])
        paired[m] = ({"n": int(e.size), "median_abs": float(np.median(np.abs(e))),
                      "p90_abs": float(np.quantile(np.abs(e), 0.9)), "mean_signed": float(e.mean())}
                     if e.size else {"n": 0, "median_abs": math.nan, "p90_abs": math.nan, "mean_signed": math.nan})
    slo_r, slo_s = _slo(rl, trace), _slo(sl, trace)
    released = set(real.filter(pl.col("released_s").is_not_null() & pl.col("released_s").is_not_nan())["request_id"].to_list())
    slo: dict[str, dict] = {}
    for g in [OVERALL, *tenants]:
        sel = [pl.col("request_id").is_in(list(released))] + ([] if g == OVERALL else [pl.col("tenant") == g])
        a = slo_r.filter(*sel)["slo_met"].drop_nulls()
        b = slo_s.filter(*sel)["slo_met"].drop_nulls()
        ra = float(a.mean()) if a.len() else None
        sa = float(b.mean()) if b.len() else None
        slo[g] = {"real": ra, "sim": sa, "n": a.len(),
                  "diff_pts": None if ra is None or sa is None else 100 * (sa - ra)}
    fairness = {}
    for key, metric in (("jain_e2e_mean", "e2e_s"), ("jain_ttft_mean", "ttft_s")):
        fr = [groups[t][metric]["mean"]["real"] for t in tenants]
        fs = [groups[t][metric]["mean"]["sim"] for t in tenants]
        fairness[key] = {"real": jain(fr), "sim": jain(fs)}
    counts = {"replayed": real.height, "real_ok": len(ok_r), "sim_ok": len(ok_s), "compared": len(both),
              "real_errors": int(real["status"].is_in(["error", "timeout", "abandoned"]).sum()),
              "real_cancelled": int(real["status"].is_in(["cancelled", "not_sent"]).sum())}
    return {"requests": counts, "groups": groups, "paired": paired, "slo": slo, "fairness": fairness}


def pair_rel_diffs(xs: list[float], ys: list[float] | None = None) -> list[float]:
    """``|x - y| / ((x + y) / 2)`` over the pairs ``i < j`` within ``xs`` (``ys`` None) or over every
    pair across ``xs`` and ``ys``: the relative error one real run makes predicting another (pairs with
    a non-finite value or a zero sum left out)."""
    pairs = ([(a, b) for i, a in enumerate(xs) for b in xs[i + 1:]] if ys is None
             else [(a, b) for a in xs for b in ys])
    return [abs(a - b) / ((a + b) / 2) for a, b in pairs if math.isfinite(a) and math.isfinite(b) and a + b > 0]


def spread(stats_per_run: list[dict]) -> dict:
    """Run-to-run spread of the real engine from several :func:`compare` results' real statistics.

    For each (group, metric, stat): the mean over pairs of runs ``i < j`` of
    ``|x_i - x_j| / ((x_i + x_j) / 2)``, i.e. the relative error one real run
    makes predicting another. NaN with fewer than two runs.
    """
    out: dict[str, dict] = {}
    if not stats_per_run:
        return out
    for g, per in stats_per_run[0]["groups"].items():
        out[g] = {}
        for m in METRICS:
            out[g][m] = {}
            for k in STATS:
                xs = [r["groups"].get(g, {}).get(m, {}).get(k, {}).get("real", math.nan) for r in stats_per_run]
                diffs = pair_rel_diffs(xs)
                out[g][m][k] = float(np.mean(diffs)) if diffs else math.nan
    return out


def aggregate(runs: list[dict]) -> dict:
    """Combine per-repeat :func:`compare` results: mean real, mean sim, mean signed
    and mean absolute relative error per (group, metric, stat), plus the spread."""
    if not runs:
        return {}
    sp = spread(runs)
    groups: dict[str, dict] = {}
    for g in runs[0]["groups"]:
        groups[g] = {}
        for m in METRICS:
            groups[g][m] = {}
            for k in STATS:
                cells = [r["groups"].get(g, {}).get(m, {}).get(k) for r in runs]
                cells = [c for c in cells if c is not None]
                errs = [c["err"] for c in cells if math.isfinite(c["err"])]
                bounds = {b: _nanmean([c.get(b, math.nan) for c in cells]) for b in ("err_lo", "err_hi")}
                groups[g][m][k] = {
                    "real": _nanmean([c["real"] for c in cells]),
                    "sim": _nanmean([c["sim"] for c in cells]),
                    "err": float(np.mean(errs)) if errs else math.nan,
                    "abs_err": float(np.mean(np.abs(errs))) if errs else math.nan,
                    "spread": sp.get(g, {}).get(m, {}).get(k, math.nan),
                    **({} if g != OVERALL else bounds),
                }
    return {"groups": groups, "repeats": len(runs)}


def _nanmean(xs: list[float]) -> float:
    v = [x for x in xs if x is not None and math.isfinite(x)]
    return float(np.mean(v)) if v else math.nan


def verdict(err: float, lo: float, hi: float, bound: float) -> str:
    """"met" (|err| within the bound), "within noise" (not met, but the bootstrap interval of the error
    reaches inside the bound: more requests could tell), or "missed" (the whole interval lies beyond it)."""
    if math.isfinite(err) and abs(err) <= bound:
        return "met"
    if math.isfinite(lo) and math.isfinite(hi) and lo <= bound and hi >= -bound:
        return "within noise"
    return "missed"


def target_check(agg: dict, targets: dict[tuple[str, str], float] | None = None,
                 variants: dict[str, dict] | None = None) -> list[dict]:
    """One row per target: the overall |error| (mean over repeats), the bound, the spread, whether met,
    the signed error with its bootstrap interval (means over repeats of each repeat's interval: no
    narrower than the interval of the mean) and the :func:`verdict`.

    ``variants`` maps a name to the aggregate of the same replays simulated again at another server
    speed (:data:`SPEED_VARIANTS`); each one's |error| is given as ``<name>_abs_err``
    (NaN where missing), never judged.
    """
    targets = TARGETS if targets is None else targets
    rows = []
    for (m, k), bound in targets.items():
        cell = agg["groups"][OVERALL][m][k]
        err = cell["abs_err"]
        row = {"metric": m, "stat": k, "abs_err": err, "bound": bound, "spread": cell["spread"],
               "met": bool(math.isfinite(err) and err <= bound),
               "within_spread": bool(math.isfinite(err) and math.isfinite(cell["spread"]) and err <= cell["spread"]),
               "err": cell["err"], "err_lo": cell.get("err_lo", math.nan), "err_hi": cell.get("err_hi", math.nan)}
        row["verdict"] = verdict(err, row["err_lo"], row["err_hi"], bound)
        for name, vagg in (variants or {}).items():
            vcell = (vagg or {}).get("groups", {}).get(OVERALL, {}).get(m, {}).get(k, {})
            row[f"{name}_abs_err"] = vcell.get("abs_err", math.nan)
        rows.append(row)
    return rows


def parse_bounds(spec: str) -> dict[tuple[str, str], float]:
    """``"e2e:p50=0.25,ttft:p99=0.5"`` -> ``{("e2e_s", "p50"): 0.25, ...}`` (fractions; a ``%`` suffix is allowed)."""
    out: dict[tuple[str, str], float] = {}
    aliases = {"e2e": "e2e_s", "ttft": "ttft_s", "tpot": "tpot_s", "itl": "itl_s", "queue": "queue_wait_s",
               "queue_wait": "queue_wait_s"}
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        key, eq, value = part.partition("=")
        metric, colon, stat = key.partition(":")
        metric = aliases.get(metric.strip().lower(), metric.strip().lower())
        stat = stat.strip().lower()
        if not eq or not colon or metric not in METRICS or stat not in STATS:
            raise ValueError(f"bad bound {part!r}: expected METRIC:STAT=VALUE with METRIC in "
                             f"{', '.join(aliases)} and STAT in {', '.join(STATS)}, e.g. e2e:p50=0.25")
        value = value.strip()
        try:
            v = float(value[:-1]) / 100 if value.endswith("%") else float(value)
        except ValueError:
            raise ValueError(f"bad bound {part!r}: {value!r} is not a number") from None
        if not v > 0:
            raise ValueError(f"bad bound {part!r}: must be > 0")
        out[(metric, stat)] = v
    return out

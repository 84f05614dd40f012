"""The validation report: sim against real, for people (HTML) and machines (JSON, Parquet).

``write_outputs(result, out_dir)`` writes

- ``report.html``: one self-contained file (plotly.js inlined, opens
  offline): the targets table, per load level the real / sim / error /
  run-to-run spread table per metric and statistic, overall and per tenant,
  SLO attainment and fairness on both sides, and four figures: CDF overlays
  (real vs sim) per metric with a dropdown over load levels, error vs load
  with the spread beside it, per-request paired latencies (sim against real)
  and the E2E latency of every request over its arrival time (where
  saturation shows);
- ``validation.json``: everything in the tables (NaN written as null);
- ``real_requests.parquet`` and ``sim_requests.parquet``: one row per
  request per level per repeat (token times included);
  ``calibration_requests.parquet``: the held-out calibration replay.
"""

from __future__ import annotations

import html
import json
import math
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
import polars as pl
from plotly.subplots import make_subplots

from driftsim.sim.atomic import atomic_write_parquet, atomic_write_text
from driftsim.sim.html import figures_html, group_dropdown
from driftsim.validation.calibration import SPEED_VARIANTS, describe_calibration
from driftsim.validation.levels import level_label
from driftsim.validation.scoring import (METRIC_LABELS, METRICS, OVERALL, STATS, metric_values, real_latencies,
                                         sim_latencies, target_check)

REAL_COLOR, SIM_COLOR = "#1f77b4", "#d62728"
CDF_POINTS = 201


def clean(obj: Any) -> Any:
    """JSON-ready copy: NaN/inf -> None, tuples -> lists, numpy scalars -> Python."""
    if isinstance(obj, dict):
        return {str(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        x = float(obj)
        return x if math.isfinite(x) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def variant_aggregates(lv) -> dict[str, dict]:
    """A level's re-simulations at another server speed, name -> aggregate, in report order."""
    variants = getattr(lv, "variants", {}) or {}
    return {name: variants[name].aggregate if name in variants else {} for name in SPEED_VARIANTS}


def speed_text(lv) -> str:
    """The real server's step times during this level's replays against the simulated ones, e.g.
    "server steps x0.94-1.05 (decode), x0.95 (mixed), x0.96-1.02 (busy time), x0.90-1.08 (busy time over
    a replay's quarters) of the simulated"; "" without any."""
    parts = []
    for kind in ("decode", "mixed", "busy"):
        xs = sorted(x[kind] for x in getattr(lv, "speed", []) if math.isfinite(x.get(kind, math.nan)))
        if xs:
            lo, hi = f"{xs[0]:.2f}", f"{xs[-1]:.2f}"
            span = f"x{lo}" if lo == hi else f"x{lo}-{hi}"
            parts.append(f"{span} ({'busy time' if kind == 'busy' else kind})")
    quarters = sorted(q for x in getattr(lv, "speed", []) for q in x.get("busy_quarters", []) if math.isfinite(q))
    if quarters:
        parts.append(f"x{quarters[0]:.2f}-{quarters[-1]:.2f} (busy time over a replay's quarters)")
    return f"server steps {', '.join(parts)} of the simulated" if parts else ""


# ---- frames ---------------------------------------------------------------------------

def request_frames(result) -> tuple[pl.DataFrame, pl.DataFrame]:
    """All levels' and repeats' per-request frames, real and sim, with ``load`` and ``repeat`` columns."""
    real, sim = [], []
    for lv in result.levels:
        load = pl.lit(lv.load, dtype=pl.Float64).alias("load")
        real += [f.with_columns(load) for f in lv.real]
        sim += [f.with_columns(load) for f in lv.sim]
    r = pl.concat(real, how="diagonal_relaxed") if real else pl.DataFrame()
    s = pl.concat(sim, how="diagonal_relaxed") if sim else pl.DataFrame()
    if "status" in s.columns:
        s = s.with_columns(pl.col("status").cast(pl.String), pl.col("finish_reason").cast(pl.String))
    return r, s


# ---- figures --------------------------------------------------------------------------

def _latency_pairs(lv, overhead_s: float) -> list[tuple[pl.DataFrame, pl.DataFrame]]:
    return [(real_latencies(r), sim_latencies(s, r, overhead_s=overhead_s)) for r, s in zip(lv.real, lv.sim)]


def _cdf(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.sort(x[np.isfinite(x)])
    if x.size == 0:
        return np.empty(0), np.empty(0)
    probs = np.linspace(0, 1, min(CDF_POINTS, x.size))
    return np.quantile(x, probs), probs


def cdf_figure(result) -> go.Figure:
    """Real vs sim CDF per metric (columns); a dropdown picks the load level (first repeat)."""
    fig = make_subplots(rows=1, cols=len(METRICS), subplot_titles=[f"{METRIC_LABELS[m]} (s)" for m in METRICS],
                        shared_yaxes=True)
    labels, counts = [], []
    for lv in result.levels:
        if not lv.real:
            continue
        rl, sl = _latency_pairs(lv, result.overhead_s)[0]
        n = 0
        for col, m in enumerate(METRICS, start=1):
            for side, lat, color in (("real", rl, REAL_COLOR), ("sim", sl, SIM_COLOR)):
                x, p = _cdf(metric_values(lat, m))
                fig.add_trace(go.Scatter(x=x, y=p, mode="lines", name=side, legendgroup=side,
                                         showlegend=col == 1, line=dict(color=color, dash="solid" if side == "real" else "dash")),
                              row=1, col=col)
                n += 1
        labels.append(level_label(lv.load))
        counts.append(n)
    group_dropdown(fig, labels, counts, y=1.15, pad_bottom=None, margin_top=110)
    fig.update_layout(title="Latency CDFs, real (solid) vs simulated (dashed)", height=420)
    fig.update_yaxes(title_text="fraction of requests (ITL: of gaps)", row=1, col=1)
    return fig


def error_vs_load_figure(result) -> go.Figure | None:
    """|relative error| of p50 and p99 per metric against load, with the real run-to-run spread."""
    levels = [lv for lv in result.levels if lv.load is not None and lv.aggregate]
    if len(levels) < 2:
        return None
    fig = make_subplots(rows=1, cols=2, subplot_titles=["p50", "p99"], shared_yaxes=True)
    palette = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd")
    loads = [lv.load for lv in levels]
    for col, stat in enumerate(("p50", "p99"), start=1):
        for m, color in zip(METRICS, palette):
            cells = [lv.aggregate["groups"][OVERALL][m][stat] for lv in levels]
            err = [100 * c["abs_err"] if math.isfinite(c["abs_err"]) else None for c in cells]
            spr = [100 * c["spread"] if math.isfinite(c["spread"]) else None for c in cells]
            fig.add_trace(go.Scatter(x=loads, y=err, mode="lines+markers", name=f"{METRIC_LABELS[m]} sim error",
                                     legendgroup=m, showlegend=col == 1, line=dict(color=color)), row=1, col=col)
            if any(v is not None for v in spr):
                fig.add_trace(go.Scatter(x=loads, y=spr, mode="lines", name=f"{METRIC_LABELS[m]} real spread",
                                         legendgroup=m, showlegend=col == 1, line=dict(color=color, dash="dot")),
                              row=1, col=col)
    fig.update_xaxes(title_text="load (fraction of simulated capacity)")
    fig.update_yaxes(title_text="|relative error| %", row=1, col=1)
    fig.update_layout(title="Simulator error vs load (solid) and the real engine's run-to-run spread (dotted)",
                      height=450)
    return fig


def paired_figure(result) -> go.Figure:
    """Per request: simulated against real TTFT and E2E, every level (first repeat); y = x is perfect."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=["TTFT (s)", "E2E (s)"])
    palette = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")
    hi = [0.0, 0.0]
    for i, lv in enumerate(result.levels):
        if not lv.real:
            continue
        rl, sl = _latency_pairs(lv, result.overhead_s)[0]
        pair = rl.join(sl, on="request_id", suffix="_sim").filter(pl.col("status") == "ok", pl.col("status_sim") == "ok")
        for col, m in enumerate(("ttft_s", "e2e_s"), start=1):
            x, y = pair[m].to_numpy(), pair[f"{m}_sim"].to_numpy()
            if x.size:
                hi[col - 1] = max(hi[col - 1], float(np.nanmax(x)), float(np.nanmax(y)))
            fig.add_trace(go.Scatter(x=x, y=y, mode="markers", name=level_label(lv.load), legendgroup=str(i),
                                     showlegend=col == 1, marker=dict(size=5, color=palette[i % len(palette)]),
                                     text=[f"request {r}" for r in pair["request_id"]]), row=1, col=col)
    for col in (1, 2):
        fig.add_trace(go.Scatter(x=[0, hi[col - 1]], y=[0, hi[col - 1]], mode="lines", showlegend=False,
                                 line=dict(color="#999", dash="dot")), row=1, col=col)
    fig.update_xaxes(title_text="real")
    fig.update_yaxes(title_text="simulated", row=1, col=1)
    fig.update_layout(title="Per-request latency, simulated vs real (on the dotted line = exact)", height=450)
    return fig


def timeline_figure(result) -> go.Figure:
    """E2E of every request against its release time, real and sim; dropdown over levels."""
    fig = go.Figure()
    labels, counts = [], []
    for lv in result.levels:
        if not lv.real:
            continue
        rl, sl = _latency_pairs(lv, result.overhead_s)[0]
        rel = lv.real[0].select("request_id", "released_s")
        for side, lat, color in (("real", rl, REAL_COLOR), ("sim", sl, SIM_COLOR)):
            d = lat.join(rel, on="request_id").filter(pl.col("status") == "ok").sort("released_s")
            fig.add_trace(go.Scatter(x=d["released_s"], y=d["e2e_s"], mode="markers", name=side,
                                     marker=dict(color=color, size=6, symbol="circle" if side == "real" else "x")))
        labels.append(level_label(lv.load))
        counts.append(2)
    group_dropdown(fig, labels, counts, y=1.15, pad_bottom=None, margin_top=110)
    fig.update_layout(title="E2E latency by release time, real vs sim (first repeat)", height=420,
                      xaxis_title="release time (s since the replay started)", yaxis_title="E2E (s)")
    return fig


# ---- tables -----------------------------------------------------------------------------

def _e(x: Any) -> str:
    return html.escape(str(x))


def fmt_s(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    return f"{x * 1000:.1f} ms" if abs(x) < 1 else f"{x:.3f} s"


def fmt_pct(x: float | None, signed: bool = False) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    return f"{100 * x:+.1f} %" if signed else f"{100 * x:.1f} %"


def _targets_html(result) -> str:
    rows = []
    for lv in reported_levels(result):
        for t in target_check(lv.aggregate, variants=variant_aggregates(lv)):
            cls = "ok" if t["met"] else "bad"
            rows.append(f"<tr><td>{_e(level_label(lv.load))}</td><td>{METRIC_LABELS[t['metric']]} {t['stat']}</td>"
                        f"<td class='{cls}'>{fmt_pct(t['abs_err'])}</td><td>&le; {fmt_pct(t['bound'])}</td>"
                        f"<td>{fmt_pct(t['spread'])}</td><td class='{cls}'>{'yes' if t['met'] else 'no'}</td>"
                        f"<td>{fmt_pct(t['err'], signed=True)} [{fmt_pct(t['err_lo'], signed=True)}, "
                        f"{fmt_pct(t['err_hi'], signed=True)}]</td><td>{_e(t['verdict'])}</td>"
                        + "".join(f"<td>{fmt_pct(t[f'{name}_abs_err'])}</td>" for name in SPEED_VARIANTS) + "</tr>")
    return (f"<p class='note'>{_e(SPEED_NOTE)}</p>"
            "<table><tr><th>level</th><th>figure</th><th>|sim error|</th><th>target</th><th>real spread</th>"
            "<th>met</th><th>error [95 % bootstrap over requests]</th><th>verdict</th>" + "".join(f"<th>{_e(label)}</th>" for label in SPEED_VARIANTS.values())
            + "</tr>" + "".join(rows) + "</table>")


#: What the two re-simulation columns of the targets table are.
SPEED_NOTE = ("|sim error| is judged: the profile and the held-out calibration replay alone. The same replays "
              "simulated again with every step scaled by a measured server speed (the server's busy time over "
              "the simulated time of the same recovered steps), never judged: session speed, the mean of it over "
              "the session's other replays (held out: nothing of the scored replay is used; it follows a server "
              "that drifted since its calibration); at server speed, the replay's own (in-sample: what is left is "
              "the simulator's batching, admission and queueing).")


def reported_levels(result) -> list:
    """The levels a report shows, in order: every scored level, then all levels pooled (a sweep's)."""
    out = [lv for lv in result.levels if lv.aggregate]
    pooled = getattr(result, "pooled", None)
    if pooled is not None and pooled.aggregate and len(out) > 1:
        out.append(pooled)
    return out


def _level_html(lv) -> str:
    agg = lv.aggregate
    groups = list(agg["groups"])
    head = "<tr><th>group</th><th>metric</th>" + "".join(
        f"<th>{s} real</th><th>{s} sim</th><th>{s} err</th><th>{s} spread</th>" for s in STATS) + "</tr>"
    body = []
    for g in groups:
        for i, m in enumerate(METRICS):
            cells = agg["groups"][g][m]
            body.append("<tr>" + (f"<td rowspan='{len(METRICS)}'><b>{_e(g)}</b></td>" if i == 0 else "")
                        + f"<td>{METRIC_LABELS[m]}</td>" + "".join(
                f"<td>{fmt_s(cells[s]['real'])}</td><td>{fmt_s(cells[s]['sim'])}</td>"
                f"<td>{fmt_pct(cells[s]['err'], signed=True)}</td><td>{fmt_pct(cells[s]['spread'])}</td>" for s in STATS)
                        + "</tr>")
    slo_rows, fair_rows = [], []
    if lv.scores:
        first = lv.scores[0]
        for g, v in first["slo"].items():
            diff = "-" if v["diff_pts"] is None else f"{v['diff_pts']:+.1f} pts"
            slo_rows.append(f"<tr><td>{_e(g)}</td><td>{fmt_pct(v['real'])}</td><td>{fmt_pct(v['sim'])}</td>"
                            f"<td>{diff}</td></tr>")
        for k, v in first["fairness"].items():
            fair_rows.append(f"<tr><td>{_e(k)}</td><td>{_num(v['real'])}</td><td>{_num(v['sim'])}</td></tr>")
    rate = f"{lv.rate_rps:.2f} req/s" if math.isfinite(lv.rate_rps) else "-"
    busy = [c.get("foreign_share") for c in getattr(lv, "contention", []) if c.get("foreign_share") is not None]
    busy = [b for b in busy if math.isfinite(b)]
    other = f", other processes used up to {100 * max(busy):.0f} % of the CPU meanwhile" if busy else ""
    speed = speed_text(lv)
    other += f"; {speed}" if speed else ""
    return (f"<h3>{_e(level_label(lv.load))}: {lv.trace.height} requests at {rate}, {len(lv.scores)} real run(s){_e(other)}"
            f"{' (interrupted)' if lv.interrupted else ''}</h3>"
            "<p class='note'>err = (sim - real) / real, averaged over repeats (each repeat simulated from its own "
            "send times); spread = mean pairwise relative difference between real runs.</p>"
            f"<table>{head}{''.join(body)}</table>"
            + ("<h4>SLO attainment (first repeat)</h4><table><tr><th>group</th><th>real</th><th>sim</th><th>diff</th></tr>"
               + "".join(slo_rows) + "</table>" if slo_rows else "")
            + ("<h4>fairness across tenants (Jain's index of per-tenant mean latency; 1 = equal)</h4>"
               "<table><tr><th>index</th><th>real</th><th>sim</th></tr>" + "".join(fair_rows) + "</table>"
               if fair_rows else "")
            + _prefix_html(lv))


def _prefix_html(lv) -> str:
    """Each replay's prefix-cache token hit rate, real (vLLM's counters) and simulated; empty when no
    request of the level carries prefix identity."""
    if not lv.trace["prefix_ids"].is_not_null().any():
        return ""
    rows = "".join(f"<tr><td>{r + 1}</td><td>{fmt_pct((e.get('real') or {}).get('prefix_token_hit_rate'))}</td>"
                   f"<td>{fmt_pct((e.get('sim') or {}).get('prefix_token_hit_rate'))}</td></tr>"
                   for r, e in enumerate(lv.engine))
    return ("<h4>prefix cache: prompt tokens found cached (vLLM /metrics vs simulated)</h4>"
            "<table><tr><th>replay</th><th>real</th><th>sim</th></tr>" + rows + "</table>")


def _num(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.3f}"


CSS = """
body{font-family:system-ui,-apple-system,sans-serif;margin:24px;color:#222;max-width:1500px}
table{border-collapse:collapse;margin:8px 0 18px;font-size:12.5px}
td,th{border:1px solid #ddd;padding:3px 7px;text-align:right}th{background:#f4f4f4}
td:first-child,th:first-child{text-align:left}
.ok{color:#1a7f37;font-weight:600}.bad{color:#c62828;font-weight:600}.note{color:#555;font-size:13px}
"""


def render_report(result, *, title: str = "driftsim validation: simulator vs real engine") -> str:
    facts = result.facts
    figs = [cdf_figure(result), error_vs_load_figure(result), paired_figure(result), timeline_figure(result)]
    fig_html = figures_html(figs)
    cfg = result.config
    server = (f"{_e(facts.model)} at {_e(facts.url)} (vLLM {_e(facts.version)}), max_model_len {facts.max_model_len}, "
              f"{facts.num_gpu_blocks} KV blocks of {facts.block_size} tokens, max_num_seqs {facts.max_num_seqs}, "
              f"max_num_batched_tokens {facts.max_num_batched_tokens}, async scheduling "
              f"{'unknown' if facts.async_scheduling is None else ('on' if facts.async_scheduling else 'off')}")
    over = (f"{result.overhead_s * 1000:.1f} ms (the part of {len(result.overhead_samples)} 1-token requests' TTFT "
            f"that does not grow with the prompt)" if result.overhead_samples else f"{result.overhead_s * 1000:.1f} ms (given)")
    notes = "".join(f"<li>{_e(n)}</li>" for n in result.notes)
    step = ""
    if getattr(result, "calibration", None):
        step = f" Calibration (never one of the traces below): {_e(describe_calibration(result.calibration))}."
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{_e(title)}</title><style>{CSS}</style></head><body>
<h1>{_e(title)}</h1>
<p class="note">Generated {datetime.now():%Y-%m-%d %H:%M}. Server: {server}. Policy {_e(cfg.get('policy'))}
{'' if cfg.get('max_outstanding') is None else f"with at most {cfg.get('max_outstanding')} in flight"}
{'' if not cfg.get('microbatch') else '(micro-batch worker)'}; profile {_e(cfg.get('profile'))};
client/HTTP overhead {over};{step} Capacity (load 1.0, the profile's) {_num(result.capacity_rps)} req/s.
{'<b>Interrupted (Ctrl-C): partial results.</b>' if result.interrupted else ''}</p>
{f'<ul class="note">{notes}</ul>' if notes else ''}
<h2>Figures to reach (|sim error| of the overall statistic, mean over repeats)</h2>
{_targets_html(result)}
<h2>Figures</h2>
{''.join(fig_html)}
<h2>Per level</h2>
{''.join(_level_html(lv) for lv in reported_levels(result))}
</body></html>"""


def write_outputs(result, out_dir: str | Path) -> dict[str, Path]:
    """Write report.html, validation.json and the per-request Parquet files; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"html": out / "report.html", "json": out / "validation.json",
             "real": out / "real_requests.parquet", "sim": out / "sim_requests.parquet"}
    data = result.to_dict()
    data["targets"] = {level_label(lv.load): target_check(lv.aggregate) for lv in reported_levels(result)}
    atomic_write_text(paths["json"], json.dumps(clean(data), indent=1))
    real, sim = request_frames(result)
    if real.height:
        atomic_write_parquet(paths["real"], real)
    if sim.height:
        atomic_write_parquet(paths["sim"], sim)
    cframe = getattr(result, "calibration_frame", None)
    if cframe is not None and cframe.height:
        paths["calibration"] = out / "calibration_requests.parquet"
        atomic_write_parquet(paths["calibration"], cframe)
    atomic_write_text(paths["html"], render_report(result))
    return paths

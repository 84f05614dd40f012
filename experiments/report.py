"""A self-contained interactive HTML report of the DriftSched experiment.

One file, plotly.js inlined, no server and no network: it opens offline
in any browser and can be mailed around. It shows the headline table
(paper vs driftsim, with the computed notes on where they differ), the
per-tier latency table, and four figures built from the experiment's
per-request data of its representative seed:

- E2E latency CDFs per tier, one line per policy;
- queue depth per tier over time for each policy, derived from arrival and
  dispatch times: ``depth(t) = #arrived(<= t) - #dispatched(<= t)``,
  sampled every second as the original records it;
- calibration bias per category over time (calibration on), per counter;
- estimation error (MAE per 10 s of arrivals) over time, per counter.

Figures that depend on the counter x calibration cell or on the policy
carry a dropdown instead of multiplying the number of plots.
"""

from __future__ import annotations

import html
import math
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
import polars as pl
from plotly.subplots import make_subplots

from driftsim.sim.atomic import atomic_write_text
from driftsim.experiments.driftsched import headline_table
from driftsim.experiments.result import ExperimentResult
from driftsim.experiments.headline import OVERALL, config_label, format_value, is_discrepancy, tier_order, view_config
from driftsim.sim.html import figures_html, group_dropdown

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#17becf")
CDF_POINTS = 201  # quantiles per CDF line: enough to read, small enough to embed 80 lines
QUEUE_STEP_S = 1.0  # the original samples queue depth per second
ERROR_BIN_S = 10.0


def _colors(names) -> dict[str, str]:
    return {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(names)}


def _configs(result: ExperimentResult) -> list[tuple[str, bool]]:
    m = result.meta
    return [(c, cal) for cal in m["calibration"] for c in m["counters"]]


def latency_cdf_figure(result: ExperimentResult) -> go.Figure:
    """E2E CDF per tier (columns) with one line per policy; dropdown over counter x calibration."""
    req = result.requests.filter(pl.col("status") == "ok")
    policies = result.meta["policies"]
    groups = tier_order([*req["tenant"].unique().to_list(), OVERALL])
    colors = _colors(policies)
    fig = make_subplots(rows=1, cols=len(groups), subplot_titles=groups, shared_yaxes=True)
    probs = np.linspace(0, 1, CDF_POINTS)
    labels, counts = [], []
    for counter, cal in _configs(result):
        n = 0
        cell = req.filter(pl.col("counter") == counter, pl.col("calibration") == cal)
        for col, group in enumerate(groups, start=1):
            part = cell if group == OVERALL else cell.filter(pl.col("tenant") == group)
            for policy in policies:
                e2e = part.filter(pl.col("policy") == policy)["e2e_s"].drop_nulls().to_numpy()
                if e2e.size == 0:
                    continue
                fig.add_trace(
                    go.Scatter(
                        x=np.quantile(e2e, probs), y=probs, mode="lines", name=policy, legendgroup=policy,
                        showlegend=col == 1, line=dict(color=colors[policy]),
                        hovertemplate=f"{policy} · {group}<br>E2E %{{x:.1f}} s<br>P(≤) %{{y:.2f}}<extra></extra>",
                    ),
                    row=1, col=col,
                )  # fmt: skip
                n += 1
        labels.append(config_label(counter, cal))
        counts.append(n)
    fig.update_xaxes(title_text="E2E latency (s)")
    fig.update_yaxes(title_text="fraction of requests", row=1, col=1)
    fig.update_layout(title=f"E2E latency CDF per tier, seed {result.meta['representative_seed']}", height=430)
    return group_dropdown(fig, labels, counts, menu_for_one=True, active=_view_index(result))


def _view_index(result: ExperimentResult) -> int:
    labels = [config_label(c, cal) for c, cal in _configs(result)]
    return labels.index(view_config(result))


def queue_depth(part: pl.DataFrame, step_s: float = QUEUE_STEP_S) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Waiting requests per tenant on a time grid: ``#arrived(<= t) - #dispatched(<= t)``.

    Only requests that were dispatched count (a refused request never
    queues). Returns the grid (s) and one depth array per tenant.
    """
    ok = part.filter(pl.col("scheduled_s").is_not_null() & pl.col("scheduled_s").is_not_nan())
    if ok.height == 0:
        return np.zeros(0), {}
    grid = np.arange(0.0, float(ok["scheduled_s"].max()) + step_s, step_s)
    out = {}
    for tenant in tier_order(ok["tenant"].unique().to_list()):
        t = ok.filter(pl.col("tenant") == tenant)
        arrived = np.searchsorted(np.sort(t["arrival_s"].to_numpy()), grid, side="right")
        dispatched = np.searchsorted(np.sort(t["scheduled_s"].to_numpy()), grid, side="right")
        out[tenant] = arrived - dispatched
    return grid, out


def queue_depth_figure(result: ExperimentResult) -> go.Figure:
    """Queue depth per tier over time, one row per policy; dropdown over counter x calibration."""
    req = result.requests
    policies = result.meta["policies"]
    tiers = tier_order(req["tenant"].unique().to_list())
    colors = _colors(tiers)
    fig = make_subplots(rows=len(policies), cols=1, subplot_titles=policies, shared_xaxes=True, vertical_spacing=0.04)
    labels, counts = [], []
    for counter, cal in _configs(result):
        n = 0
        for row, policy in enumerate(policies, start=1):
            part = req.filter(pl.col("counter") == counter, pl.col("calibration") == cal, pl.col("policy") == policy)
            grid, depth = queue_depth(part)
            for tier, d in depth.items():
                fig.add_trace(
                    go.Scatter(
                        x=grid, y=d, mode="lines", name=tier, legendgroup=tier, showlegend=row == 1,
                        line=dict(color=colors[tier], width=1.5),
                        hovertemplate=f"{policy} · {tier}<br>t %{{x:.0f}} s<br>waiting %{{y}}<extra></extra>",
                    ),
                    row=row, col=1,
                )  # fmt: skip
                n += 1
        labels.append(config_label(counter, cal))
        counts.append(n)
    fig.update_xaxes(title_text="time (s)", row=len(policies), col=1)
    fig.update_yaxes(title_text="waiting")
    fig.update_layout(title=f"Queue depth per tier, seed {result.meta['representative_seed']}", height=230 * len(policies) + 120)
    return group_dropdown(fig, labels, counts, menu_for_one=True, active=_view_index(result))


def bias_figure(result: ExperimentResult) -> go.Figure | None:
    """Calibration bias per category after every completion (calibration on), one column per counter; dropdown over policy."""
    hist = result.bias_history
    if hist.height == 0:
        return None
    counters = [c for c in result.meta["counters"] if c in hist["counter"].unique().to_list()]
    policies = [p for p in result.meta["policies"] if p in hist["policy"].unique().to_list()]
    cats = sorted(hist["key"].unique().to_list())
    colors = _colors(cats)
    fig = make_subplots(rows=1, cols=len(counters), subplot_titles=[f"{c} counter" for c in counters], shared_yaxes=True)
    counts = []
    for policy in policies:
        n = 0
        for col, counter in enumerate(counters, start=1):
            part = hist.filter(pl.col("policy") == policy, pl.col("counter") == counter)
            for cat in cats:
                h = part.filter(pl.col("key") == cat)
                if h.height == 0:
                    continue
                fig.add_trace(
                    go.Scatter(
                        x=h["time_s"].to_numpy(), y=h["bias"].to_numpy(), mode="lines", name=cat, legendgroup=cat,
                        showlegend=col == 1, line=dict(color=colors[cat]),
                        hovertemplate=f"{policy} · {counter} · {cat}<br>t %{{x:.0f}} s<br>bias %{{y:.3f}}<extra></extra>",
                    ),
                    row=1, col=col,
                )  # fmt: skip
                n += 1
        counts.append(n)
    for col in range(1, len(counters) + 1):
        fig.add_hline(y=1.0, line=dict(color="#999", dash="dot"), row=1, col=col)
    fig.update_xaxes(title_text="completion time (s)")
    fig.update_yaxes(title_text="bias (actual / base)", row=1, col=1)
    fig.update_layout(title=f"Calibration bias per category (calibration on), seed {result.meta['representative_seed']}", height=430)
    return group_dropdown(fig, policies, counts, menu_for_one=True, active=0)


def error_figure(result: ExperimentResult) -> go.Figure:
    """MAE of estimates per 10 s of arrivals, calibration off vs on, one column per counter; dropdown over policy."""
    req = result.requests.filter(pl.col("observed_output").is_not_null())
    counters = result.meta["counters"]
    policies = result.meta["policies"]
    fig = make_subplots(rows=1, cols=len(counters), subplot_titles=[f"{c} counter ({'words' if c == 'whitespace' else 'tokens'})" for c in counters])
    colors = {False: "#7f7f7f", True: "#1f77b4"}
    counts = []
    for policy in policies:
        n = 0
        for col, counter in enumerate(counters, start=1):
            for cal in result.meta["calibration"]:
                part = req.filter(pl.col("policy") == policy, pl.col("counter") == counter, pl.col("calibration") == cal)
                binned = (
                    part.with_columns(
                        t=(pl.col("arrival_s") / ERROR_BIN_S).floor() * ERROR_BIN_S + ERROR_BIN_S / 2,
                        err=(pl.col("est_output") - pl.col("observed_output")).abs(),
                    )
                    .group_by("t").agg(pl.col("err").mean().alias("mae"), pl.len().alias("n")).sort("t")
                )  # fmt: skip
                name = f"calibration {'on' if cal else 'off'}"
                fig.add_trace(
                    go.Scatter(
                        x=binned["t"].to_numpy(), y=binned["mae"].to_numpy(), mode="lines+markers", name=name, legendgroup=name,
                        showlegend=col == 1, line=dict(color=colors[cal]), marker=dict(size=4), customdata=binned["n"].to_numpy(),
                        hovertemplate=f"{policy} · {counter} · {name}<br>arrivals at %{{x:.0f}} s (%{{customdata}})<br>MAE %{{y:.1f}}<extra></extra>",
                    ),
                    row=1, col=col,
                )  # fmt: skip
                n += 1
        counts.append(n)
    fig.update_xaxes(title_text="arrival time (s)")
    fig.update_yaxes(title_text=f"MAE per {ERROR_BIN_S:g} s of arrivals", row=1, col=1)
    fig.update_layout(title=f"Output-length estimation error over time, seed {result.meta['representative_seed']}", height=430)
    return group_dropdown(fig, policies, counts, menu_for_one=True, active=0)


# --------------------------------------------------------------------------- HTML
_CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, sans-serif; margin: 2em auto; max-width: 1280px; color: #222; padding: 0 1em; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 14px; }
th, td { border-bottom: 1px solid #ddd; padding: 4px 10px; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.differs td { background: #fff3f0; }
span.differs { color: #b42318; font-weight: 600; }
span.agrees { color: #067647; }
.meta { color: #555; font-size: 14px; }
h2 { margin-top: 2em; }
"""


def _e(x: Any) -> str:
    return html.escape(str(x))


def _note_html(note: str) -> str:
    if is_discrepancy(note):
        return f'<span class="differs">{_e(note)}</span>'
    if note.startswith(("within", "agrees")):
        return f'<span class="agrees">{_e(note)}</span>'
    return _e(note)


def headline_html(rows: list[dict]) -> str:
    """The headline table as HTML; rows whose note reports a gap to the paper are highlighted."""
    out = ["<table><tr><th>metric</th><th>paper</th><th>driftsim</th><th>note</th></tr>"]
    for r in rows:
        cls = ' class="differs"' if is_discrepancy(r["note"]) else ""
        out.append(
            f"<tr{cls}><td>{_e(r['metric'])}</td><td class='num'>{_e(format_value(r['paper'], r['unit']))}</td>"
            f"<td class='num'>{_e(format_value(r['driftsim'], r['unit']))}</td><td>{_note_html(r['note'])}</td></tr>"
        )
    out.append("</table>")
    return "\n".join(out)


def per_tier_html(result: ExperimentResult, label: str) -> str:
    """Per-tier latency per policy (mean over seeds) for one counter x calibration cell."""
    cell = result.headline["per_tier"].get(label, {})
    jain = result.headline["jain"].get(label, {})
    out = [
        "<table><tr><th>policy</th><th>tier</th><th>E2E mean</th><th>E2E p50</th><th>E2E p90</th><th>E2E p99</th>"
        "<th>queue wait p50</th><th>Jain (mean E2E)</th></tr>"
    ]
    for policy, groups in cell.items():
        for i, (tier, g) in enumerate(groups.items()):
            j = format_value(jain.get(policy)) if i == 0 else ""
            cells = "".join(
                f"<td class='num'>{_fmt_s(g[c])}</td>" for c in ("e2e_mean_s", "e2e_p50_s", "e2e_p90_s", "e2e_p99_s", "queue_wait_p50_s")
            )
            tier_cell = f"<b>{_e(tier)}</b>" if tier == OVERALL else _e(tier)
            out.append(f"<tr><td>{_e(policy) if i == 0 else ''}</td><td>{tier_cell}</td>{cells}<td class='num'>{j}</td></tr>")
    out.append("</table>")
    return "\n".join(out)


def beyond_html(result: ExperimentResult) -> str:
    """Regret to the oracle and the learned predictor's error under SJF (see headline.beyond_the_paper)."""
    beyond = result.headline.get("beyond") or {}
    if not beyond:
        return "<p>Not run (needs SJF in the grid).</p>"
    out = ["<table><tr><th>estimator</th><th>E2E p50 regret</th><th>E2E p99 regret</th><th>MAE (tokens)</th></tr>"]
    for name, r in beyond["regret"].items():
        out.append(
            f"<tr><td>{_e(name)}</td><td class='num'>{r['p50']:+.1f} s</td><td class='num'>{r['p99']:+.1f} s</td>"
            f"<td class='num'>{beyond['mae'][name]:.1f}</td></tr>"
        )
    out.append("</table>")
    return "\n".join(out)


def _fmt_s(x: float | None) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.1f} s"


def render_report(result: ExperimentResult, *, title: str = "DriftSched reproduction in driftsim", tolerance_pts: float = 10.0) -> str:
    """The whole report as one HTML string (plotly.js included)."""
    m = result.meta
    rows = headline_table(result, tolerance_pts=tolerance_pts)
    gaps = [r for r in rows if is_discrepancy(r["note"])]
    view = view_config(result)
    figures = [latency_cdf_figure(result), queue_depth_figure(result), bias_figure(result), error_figure(result)]
    fig_html = figures_html(figures)
    gap_list = "".join(
        f"<li>{_e(r['metric'])}: driftsim {_e(format_value(r['driftsim'], r['unit']))} vs paper "
        f"{_e(format_value(r['paper'], r['unit']))} — {_e(r['note'])}</li>"
        for r in gaps
    )
    other_cells = "".join(
        f"<details><summary>{_e(config_label(c, cal))}</summary>{per_tier_html(result, config_label(c, cal))}</details>"
        for c, cal in _configs(result)
        if config_label(c, cal) != view
    )
    engine = m["engine"]
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f"<p class='meta'>{m['runs']} runs: seeds {_e(m['seeds'])} x policies {_e(', '.join(m['policies']))} x counters "
        f"{_e(', '.join(m['counters']))} x calibration {_e(m['calibration'])}; "
        f"{m['n_learning']} learning + {m['n_stress']} stress requests per run; profile {_e(m['profile'])} "
        f"({_e(m['profile_source'])}); {_e(engine['mode'])} engine, batch {engine['batch_size']}, wait {engine['batch_wait_s']} s, "
        f"{engine['kv_blocks']} KV blocks; simulated in {m['wall_s']:.1f} s wall; written {datetime.now():%Y-%m-%d %H:%M}.</p>",
        "<h2>Headline: paper vs driftsim</h2>",
        f"<p>Notes compare each number with the paper's at a tolerance of {tolerance_pts:g} percentage points.</p>",
        headline_html(rows),
        "<h3>Where driftsim differs from the paper</h3>",
        f"<ul>{gap_list}</ul>" if gaps else "<p>Every compared number is within tolerance.</p>",
        "<h3>Caveats</h3>",
        "<ul>" + "".join(f"<li>{_e(n)}</li>" for n in result.headline.get("notes", [])) + "</ul>",
        f"<h2>Latency per tier ({_e(view)}; mean over seeds)</h2>",
        "<p>Only SJF reads the estimates, so the other policies are the same in every counter x calibration cell.</p>",
        per_tier_html(result, view),
        other_cells,
        "<h2>Beyond the paper: regret to an oracle, and a learned predictor</h2>",
        "<p>SJF with each estimator, minus SJF when the real output lengths are known (mean over seeds), and each "
        "estimator's mean absolute error in tokens.</p>",
        beyond_html(result),
        "<h2>Figures</h2>",
        "<p>Use each figure's dropdown to switch the counter x calibration cell or the policy.</p>",
        *fig_html,
        "</body></html>",
    ]
    return "\n".join(parts)


def write_report(result: ExperimentResult, path: str | Path, **kwargs: Any) -> Path:
    """Write :func:`render_report` to ``path`` (folders created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, render_report(result, **kwargs))
    return path

"""A self-contained interactive HTML report of a sweep or plan results folder.

One file, plotly.js inlined, no server and no network: it opens from disk in
any browser. Contents:

- latency vs load per tenant (p99 TTFT, p99 E2E, SLO attainment), one line
  per policy (or the first other axis), 95 % t-interval error bars across
  seeds, dashed lines at each tenant's SLO; a dropdown picks the values of
  the remaining axes;
- TTFT and E2E CDFs per tenant, one line per configuration (first seed);
- queue depth and running requests per tenant and estimated KV use over
  time, for one representative run (first seed) per configuration;
- cost per million output tokens per configuration ($/GPU-hour x GPUs x
  span / tokens), or GPU-hours per million tokens when no price is known;
- the summary table (mean +- half-width), failed runs, and a plan's answer.

Queue depth, running requests and KV use are *derived from per-request
times* (see :func:`driftsim.capacity.runner.timeseries`), not sampled inside the
engine: engine-side sampling of batch size and KV blocks is not available yet.
"""

from __future__ import annotations

import html
import math
from datetime import datetime
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import polars as pl
from plotly.subplots import make_subplots

from driftsim.capacity.results import ResultSet, add_costs, aggregate, pool_price
from driftsim.sim.atomic import atomic_write_text
from driftsim.sim.html import figures_html, group_dropdown

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#17becf", "#bcbd22")
MAX_LINES = 24  # configurations drawn in the CDF figure
MAX_TABLE_ROWS = 300
LOAD_METRICS = (
    ("ttft_s_p99", "p99 TTFT (s)", "slo_ttft_s"),
    ("e2e_s_p99", "p99 E2E (s)", "slo_e2e_s"),
    ("slo_attainment", "SLO attainment", None),
)


def _e(x: Any) -> str:
    return html.escape(str(x))


def _color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def _tenants(df: pl.DataFrame) -> list[str]:
    names = sorted(t for t in df["tenant"].unique().to_list() if t != "overall")
    return [*names, "overall"]


def _axes(rs: ResultSet) -> list[str]:
    axes = [a for a in rs.axes if a in rs.table.columns]
    if not axes:  # plan folders: the searched parameter is the axis
        question = (rs.meta.get("plan") or {}).get("question")
        axes = {"replicas": ["replicas"], "load": ["rate_scale"], "gpu-mix": ["profile"], "policy": ["policy"]}.get(question, [])
        axes = [a for a in axes if a in rs.table.columns]
    return axes


# --------------------------------------------------------------------------- figures
def load_figures(rs: ResultSet, summary: pl.DataFrame) -> list[go.Figure]:
    """Latency (and attainment) vs load per tenant, lines per series, dropdown over the other axes."""
    axes = _axes(rs)
    if summary.height == 0:
        return []
    numeric = [a for a in axes if summary.schema.get(a) in (pl.Float64, pl.Int64)]
    x = "rate_scale" if "rate_scale" in axes else (numeric[0] if numeric else None)
    rest = [a for a in axes if a != x]
    series = "policy" if "policy" in rest else (rest[0] if rest else None)
    others = [a for a in rest if a != series]
    tenants = _tenants(summary)
    slo = _slo_lines(rs.table)
    figs = []
    for metric, title, slo_col in LOAD_METRICS:
        part = summary.filter(pl.col("metric") == metric)
        if part.height == 0 or part["mean"].is_nan().all():
            continue
        fig = make_subplots(rows=1, cols=len(tenants), subplot_titles=tenants, shared_yaxes=True)
        combos = part.select(others).unique(maintain_order=True).rows() if others else [()]
        labels, counts = [], []
        for combo in combos:
            sel = part
            for a, v in zip(others, combo):
                sel = sel.filter(pl.col(a) == v)
            n = 0
            names = sel[series].unique(maintain_order=True).to_list() if series else [None]
            for si, name in enumerate(names):
                s = sel if series is None else sel.filter(pl.col(series) == name)
                for col, tenant in enumerate(tenants, start=1):
                    t = s.filter(pl.col("tenant") == tenant)
                    if x is not None:
                        t = t.sort(x)
                    xs = t[x].to_list() if x else t["config"].to_list()
                    fig.add_trace(
                        go.Scatter(
                            x=xs, y=t["mean"].to_list(), mode="lines+markers", name=f"{series}={name}" if series else metric,
                            legendgroup=str(name), showlegend=col == 1, line=dict(color=_color(si)),
                            error_y=dict(type="data", array=[0 if (h is None or math.isnan(h)) else h for h in t["half_width"].to_list()], visible=True),
                            hovertemplate=f"{_e(name) if series else ''} · {tenant}<br>{x or 'config'} %{{x}}<br>{title} %{{y:.4g}}<extra></extra>",
                        ),
                        row=1, col=col,
                    )  # fmt: skip
                    n += 1
            labels.append(", ".join(f"{a}={v}" for a, v in zip(others, combo)) or "all")
            counts.append(n)
        if slo_col:
            for col, tenant in enumerate(tenants, start=1):
                if tenant in slo.get(slo_col, {}):
                    fig.add_hline(y=slo[slo_col][tenant], line=dict(color="#333", dash="dash", width=1.5), row=1, col=col,
                                  annotation_text="SLO", annotation_position="top left")  # fmt: skip
        fig.update_xaxes(title_text=x or "configuration")
        fig.update_yaxes(title_text=title, row=1, col=1)
        fig.update_layout(title=f"{title} vs {x or 'configuration'} per tenant (mean over seeds, 95 % CI)", height=430)
        figs.append(group_dropdown(fig, labels, counts))
    return figs


def _slo_lines(table: pl.DataFrame) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for col in ("slo_ttft_s", "slo_e2e_s"):
        if col not in table.columns:
            continue
        part = table.filter(pl.col(col).is_not_nan() & pl.col(col).is_not_null() & (pl.col("tenant") != "overall"))
        part = part.group_by("tenant").agg(pl.col(col).first())
        out[col] = dict(zip(part["tenant"].to_list(), part[col].to_list()))
    return out


def cdf_figure(rs: ResultSet) -> go.Figure | None:
    """TTFT/E2E CDF per tenant, one line per configuration (first seed); dropdown over the metric."""
    cdf = rs.cdf
    if cdf.height == 0:
        return None
    configs = cdf["config"].unique(maintain_order=True).to_list()[:MAX_LINES]
    tenants = _tenants(cdf)
    fig = make_subplots(rows=1, cols=len(tenants), subplot_titles=tenants, shared_yaxes=True)
    labels, counts = [], []
    for metric, name in (("e2e_s", "E2E"), ("ttft_s", "TTFT")):
        n = 0
        for ci, config in enumerate(configs):
            for col, tenant in enumerate(tenants, start=1):
                part = cdf.filter(pl.col("config") == config, pl.col("tenant") == tenant, pl.col("metric") == metric).sort("prob")
                if part.height == 0:
                    continue
                fig.add_trace(
                    go.Scatter(x=part["value_s"].to_list(), y=part["prob"].to_list(), mode="lines", name=config, legendgroup=config,
                               showlegend=col == 1, line=dict(color=_color(ci)),
                               hovertemplate=f"{_e(config)} · {tenant}<br>{name} %{{x:.3g}} s<br>P(≤) %{{y:.2f}}<extra></extra>"),
                    row=1, col=col,
                )  # fmt: skip
                n += 1
        labels.append(name)
        counts.append(n)
    fig.update_xaxes(title_text="latency (s)", type="log")
    fig.update_yaxes(title_text="fraction of completed requests", row=1, col=1)
    more = f" (first {MAX_LINES} of {cdf['config'].n_unique()})" if cdf["config"].n_unique() > MAX_LINES else ""
    fig.update_layout(title=f"Latency CDF per tenant, one line per configuration{more}, first seed", height=450)
    return group_dropdown(fig, labels, counts)


def timeseries_figure(rs: ResultSet) -> go.Figure | None:
    """Queue depth, running requests and estimated KV use over time for one run per configuration (dropdown)."""
    ts = rs.timeseries
    if ts.height == 0:
        return None
    configs = ts["config"].unique(maintain_order=True).to_list()[: 4 * MAX_LINES]
    tenants = _tenants(ts)
    fig = make_subplots(
        rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.06,
        subplot_titles=("waiting requests (queue depth)", "running requests (≈ batch size, all replicas)",
                        "KV cache use (estimated, share of the pool's KV tokens)"),
    )  # fmt: skip
    labels, counts = [], []
    for config in configs:
        part = ts.filter(pl.col("config") == config)
        n = 0
        for ti, tenant in enumerate(tenants):
            t = part.filter(pl.col("tenant") == tenant).sort("t_s")
            if t.height == 0:
                continue
            dash = "dot" if tenant == "overall" else None
            for row, col in ((1, "queue_depth"), (2, "running")):
                fig.add_trace(
                    go.Scatter(x=t["t_s"].to_list(), y=t[col].to_list(), mode="lines", name=tenant, legendgroup=tenant,
                               showlegend=row == 1, line=dict(color=_color(ti), dash=dash, width=1.5),
                               hovertemplate=f"{tenant}<br>t %{{x:.1f}} s<br>{col.replace('_', ' ')} %{{y}}<extra></extra>"),
                    row=row, col=1,
                )  # fmt: skip
                n += 1
            if tenant == "overall":
                fig.add_trace(
                    go.Scatter(x=t["t_s"].to_list(), y=t["kv_usage"].to_list(), mode="lines", name="KV use", showlegend=False,
                               line=dict(color="#444"), hovertemplate="t %{x:.1f} s<br>KV %{y:.1%}<extra></extra>"),
                    row=3, col=1,
                )  # fmt: skip
                n += 1
        labels.append(config)
        counts.append(n)
    fig.update_xaxes(title_text="time (s)", row=3, col=1)
    fig.update_yaxes(tickformat=".0%", row=3, col=1)
    fig.update_layout(title="Over time, one representative run (first seed) per configuration", height=760)
    return group_dropdown(fig, labels, counts)


def cost_figure(rs: ResultSet, prices: dict) -> tuple[go.Figure | None, str]:
    """Cost (or GPU-hours) per million output tokens per configuration, mean over seeds with 95 % CI."""
    t = rs.table
    if t.height == 0:
        return None, ""
    overall = t.filter(pl.col("tenant") == "overall")
    if prices:
        usd = [pool_price(p, r, prices) for p, r in zip(overall["profile"].to_list(), overall["replicas"].to_list())]
        hourly, unit = pl.Series(usd, dtype=pl.Float64), "$ per million output tokens"
    else:
        hourly, unit = overall["replicas"].cast(pl.Float64), "GPU-hours per million output tokens (no prices given)"
    overall = overall.with_columns(
        (hourly * pl.col("span_s") / 3600 / (pl.col("output_tokens") / 1e6)).alias("per_m")
    )
    agg = aggregate(overall.with_columns(pl.lit("overall").alias("tenant")), metrics=("per_m",))
    if agg.height == 0 or agg["mean"].is_nan().all():
        return None, unit
    fig = go.Figure(go.Bar(
        x=agg["config"].to_list(), y=agg["mean"].to_list(), marker_color=PALETTE[0],
        error_y=dict(type="data", array=[0 if (h is None or math.isnan(h)) else h for h in agg["half_width"].to_list()]),
        hovertemplate="%{x}<br>%{y:.4g}<extra></extra>",
    ))  # fmt: skip
    fig.update_layout(title=f"Cost: {unit} (pool charged for each run's span; mean over seeds, 95 % CI)", height=430,
                      yaxis_title=unit, xaxis_title="configuration")  # fmt: skip
    return fig, unit


# --------------------------------------------------------------------------- tables
def summary_html(summary: pl.DataFrame, axes: list[str]) -> str:
    if summary.height == 0:
        return "<p>No completed runs.</p>"
    cols = [("ttft_s_p99", "p99 TTFT (s)"), ("e2e_s_p99", "p99 E2E (s)"), ("slo_attainment", "SLO attainment"),
            ("throughput_rps", "throughput (req/s)"), ("usd_per_m_output_tokens", "$ / M tokens")]  # fmt: skip
    cols = [c for c in cols if c[0] in summary["metric"].unique().to_list()]
    keys = ["config", "tenant"]
    wide = summary.filter(pl.col("metric").is_in([c for c, _ in cols]))
    rows = wide.select(keys).unique(maintain_order=True).head(MAX_TABLE_ROWS).rows()
    index = {(r["config"], r["tenant"], r["metric"]): r for r in wide.to_dicts()}
    out = ["<table><tr><th>configuration</th><th>tenant</th>" + "".join(f"<th>{_e(n)}</th>" for _, n in cols) + "<th>seeds</th></tr>"]
    for config, tenant in rows:
        cells, n = [], 0
        for c, _ in cols:
            r = index.get((config, tenant, c))
            n = max(n, r["n"] if r else 0)
            cells.append(f"<td class='num'>{_fmt_ci(r)}</td>")
        out.append(f"<tr><td>{_e(config)}</td><td>{_e(tenant)}</td>{''.join(cells)}<td class='num'>{n}</td></tr>")
    out.append("</table>")
    total = summary.select(keys).unique().height
    if total > MAX_TABLE_ROWS:
        out.append(f"<p class='meta'>first {MAX_TABLE_ROWS} of {total} rows; every row is in summary.parquet.</p>")
    return "\n".join(out)


def _fmt_ci(r: dict | None) -> str:
    if r is None or r["mean"] is None or math.isnan(r["mean"]):
        return "—"
    m, h = r["mean"], r["half_width"]
    if h is None or math.isnan(h):
        return f"{m:.4g}"
    return f"{m:.4g} ± {h:.2g}"


def plan_html(plan: dict) -> str:
    if not plan:
        return ""
    parts = [f"<h2>Plan: {_e(plan.get('question'))}</h2>", f"<p><b>Answer:</b> {_e(plan.get('headline'))}</p>"]
    if plan.get("binding"):
        parts.append(f"<p><b>Margin (binding target):</b> {_e(plan['binding'])}</p>")
    if plan.get("notes"):
        parts.append("<ul>" + "".join(f"<li>{_e(n)}</li>" for n in plan["notes"]) + "</ul>")
    probes = plan.get("probes") or []
    if probes:
        cols = list(probes[0])
        parts.append("<table><tr>" + "".join(f"<th>{_e(c)}</th>" for c in cols) + "</tr>")
        for p in probes:
            parts.append("<tr>" + "".join(f"<td>{_e(_short(p.get(c)))}</td>" for c in cols) + "</tr>")
        parts.append("</table>")
    return "\n".join(parts)


def _short(v: Any) -> str:
    if isinstance(v, float):
        return "—" if math.isnan(v) else f"{v:.4g}"
    return "" if v is None else str(v)


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; max-width: 1400px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.meta { color: #555; font-size: 14px; }
.warn { color: #b42318; }
h2 { margin-top: 2em; }
"""


def render_report(rs: ResultSet, *, prices: dict | None = None, title: str | None = None) -> str:
    """The whole report as one HTML string (plotly.js inlined once)."""
    prices = dict(rs.meta.get("prices") or {}, **(prices or {}))
    if prices and "usd_per_m_output_tokens" not in rs.table.columns and rs.table.height:
        rs.table = add_costs(rs.table, prices)
    summary = aggregate(rs.table) if rs.table.height else pl.DataFrame()
    axes = _axes(rs)
    m = rs.meta
    title = title or f"driftsim {'plan' if m.get('plan') else 'sweep'}: {m.get('scenario_name', '')}".rstrip(": ")
    figures = [*load_figures(rs, summary), cdf_figure(rs), timeseries_figure(rs)]
    cost_fig, unit = cost_figure(rs, prices)
    figures.append(cost_fig)
    fig_html = figures_html(figures)
    runs = rs.runs
    n_runs = runs.height
    failed = runs.filter(~pl.col("ok")) if n_runs else runs
    fail_html = ""
    if failed.height:
        items = "".join(f"<li>{_e(r['label'])}: {_e(r['error'])}</li>" for r in failed.head(50).to_dicts())
        fail_html = f"<h2 class='warn'>{failed.height} failed run(s)</h2><ul>{items}</ul>"
    axes_txt = "; ".join(f"{a}: {', '.join(map(str, v))}" for a, v in (m.get("axes") or {}).items()) or "—"
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f"<p class='meta'>{n_runs} runs ({failed.height} failed) on {_e(m.get('executor', '?'))}; axes {_e(axes_txt)}; "
        f"seeds {_e(m.get('seeds', '?'))}; wall {m.get('wall_s', float('nan')):.1f} s; "
        f"report written {datetime.now():%Y-%m-%d %H:%M}.</p>",
        plan_html(m.get("plan") or {}),
        fail_html,
        "<h2>Summary (mean ± 95 % t-interval half-width across seeds)</h2>",
        summary_html(summary, axes),
        "<h2>Figures</h2>",
        "<p>Dropdowns switch the values of the axes not on the plot, or the metric. Error bars are 95 % t-intervals "
        "across seeds (none with one seed).</p>",
        *fig_html,
        "<h2>What is not here yet</h2>",
        "<ul><li>Batch size and KV use are <b>derived from per-request times</b> (scheduled, first token, finish; decode "
        "progress taken as linear), not sampled inside the engine: engine-side sampling (sim/engine.py) is not "
        "available yet, so preemptions and block rounding are not reflected.</li>"
        "<li>Time series and CDFs are recorded for the first seed of each configuration only.</li></ul>",
        "</body></html>",
    ]
    return "\n".join(parts)


def write_report(results: str | Path | ResultSet, out: str | Path | None = None, **kwargs: Any) -> Path:
    """Write the report of a results folder (default: ``report.html`` inside it); returns the path."""
    rs = results if isinstance(results, ResultSet) else ResultSet.load(results)
    if out is None:
        if isinstance(results, ResultSet):
            raise ValueError("out: give a path when passing a ResultSet")
        p = Path(results)
        out = (p.parent if p.is_file() else p) / "report.html"
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, render_report(rs, **kwargs))
    return out

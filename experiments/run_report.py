"""One run on one offline HTML page: the figures a `vllm bench serve` user reads, and the engine over time.

The page holds the run's `vllm bench serve`-style table per tenant and
overall (latencies in the unit their header names, SLO attainment in
percent), latency CDFs per tenant (TTFT and TPOT in ms, E2E in s), TTFT and
E2E over the run by arrival time, and the engine's batch size, queue and
KV use as the engine itself sampled them (``engine_samples.parquet``, see
:mod:`driftsim.sim.sampling`). plotly.js is inlined: no server, no network.

A run is a folder ``driftsim simulate`` wrote (``summary.json``,
``requests.parquet``, ``engine_samples.parquet`` when sampled) or a
:class:`~driftsim.sim.run.SimResult` in memory.
"""

from __future__ import annotations

import html
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import polars as pl
from plotly.subplots import make_subplots

from driftsim.errors import ConfigError
from driftsim.sim.atomic import atomic_write_text
from driftsim.sim.html import figures_html
from driftsim.sim.run import SimResult
from driftsim.sim.sampling import ENGINE_SAMPLES_FILE
from driftsim.sim.summary_fields import bench_field

__all__ = ["RunData", "is_run_folder", "load_run", "write_run_report", "TABLE_COLUMNS", "CDF_METRICS"]

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#17becf")
CDF_POINTS = 201
#: (per-request column, label, scale to the unit shown, unit)
CDF_METRICS = (("ttft_s", "TTFT", 1e3, "ms"), ("tpot_s", "TPOT", 1e3, "ms"), ("e2e_s", "E2E", 1.0, "s"))
#: The table's columns: (header, summary key, kind).
TABLE_COLUMNS = (
    ("requests", "requests", "int"), ("done", "completed", "int"), ("req/s", "throughput_rps", "rate"),
    ("goodput/s", "goodput_rps", "rate"), ("SLO met", "slo_attainment", "pct"),
    ("in tok/s", "input_tokens_per_s", "tok"), ("out tok/s", "output_tokens_per_s", "tok"),
    *((f"{m.upper()} {s} ({u})", bench_field(m, s), "num") for m, u in (("ttft", "ms"), ("tpot", "ms"),
      ("itl", "ms"), ("e2e", "s")) for s in ("mean", "p50", "p95", "p99")),
)  # fmt: skip


@dataclass(frozen=True)
class RunData:
    """What a report or a comparison reads of one run."""

    name: str
    summary: dict
    requests: pl.DataFrame | None  # None when the run kept only its summary
    samples: pl.DataFrame | None  # the engine's samples, None when not recorded


def is_run_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder ``driftsim simulate`` wrote (``summary.json``, and no sweep's ``results`` table)."""
    folder = Path(path)
    sweep = any((folder / f"results.{ext}").is_file() for ext in ("parquet", "csv"))
    return folder.is_dir() and (folder / "summary.json").is_file() and not sweep


def load_run(run: str | os.PathLike | SimResult, *, samples: pl.DataFrame | None = None,
             name: str | None = None) -> RunData:  # fmt: skip
    """A run folder (``summary.json`` and, when kept, ``requests.parquet`` and ``engine_samples.parquet``) or a
    result in memory (``samples``: an :class:`~driftsim.sim.sampling.EngineSampler`'s frame)."""
    if isinstance(run, SimResult):
        return RunData(name or "run", run.summary, run.requests, samples)
    folder = Path(run)
    summary_file = folder / "summary.json"
    if not summary_file.is_file():
        raise ConfigError(f"{folder}: not a run folder (expected summary.json, written by `driftsim simulate`)")
    try:
        summary = json.loads(summary_file.read_text())["summary"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ConfigError(f"{summary_file}: expected a JSON object with a 'summary' (from `driftsim simulate`): {e}")
    requests = pl.read_parquet(folder / "requests.parquet") if (folder / "requests.parquet").is_file() else None
    sample_file = folder / ENGINE_SAMPLES_FILE
    if samples is None and sample_file.is_file():
        samples = pl.read_parquet(sample_file)
    return RunData(name or folder.name, summary, requests, samples)


def _cell(x, kind: str) -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "-"
    return {"int": f"{x:d}" if isinstance(x, int) else f"{x:.0f}", "rate": f"{x:.2f}", "pct": f"{100 * x:.1f} %",
            "tok": f"{x:.0f}"}.get(kind, f"{x:.1f}" if abs(x) >= 10 else f"{x:.3g}")  # fmt: skip


def table_html(rows: list[tuple[str, dict]]) -> str:
    """An HTML table of summary groups, one row per (label, group)."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h, _, _ in TABLE_COLUMNS)
    body = "".join(
        f"<tr><th>{html.escape(label)}</th>" + "".join(f"<td>{_cell(g.get(k), kind)}</td>" for _, k, kind in TABLE_COLUMNS)
        + "</tr>" for label, g in rows
    )  # fmt: skip
    return f"<table><tr><th></th>{head}</tr>{body}</table>"


def summary_rows(summary: dict) -> list[tuple[str, dict]]:
    return [*summary.get("tenants", {}).items(), ("overall", summary["overall"])]


def cdf_figure(groups: list[tuple[str, pl.DataFrame]], title: str) -> go.Figure | None:
    """One panel per metric of :data:`CDF_METRICS`, one line per (label, completed requests)."""
    if not groups:
        return None
    fig = make_subplots(rows=1, cols=len(CDF_METRICS), subplot_titles=[f"{m[1]} ({m[3]})" for m in CDF_METRICS])
    probs = np.linspace(0, 1, CDF_POINTS)
    for i, (label, part) in enumerate(groups):
        for col, (metric, name, scale, unit) in enumerate(CDF_METRICS, start=1):
            x = part[metric].drop_nulls().drop_nans().to_numpy() * scale
            if x.size:
                fig.add_trace(go.Scatter(
                    x=np.quantile(x, probs), y=probs, mode="lines", name=label, legendgroup=label,
                    showlegend=col == 1, line=dict(color=PALETTE[i % len(PALETTE)]),
                    hovertemplate=f"{html.escape(label)}<br>{name} %{{x:.3g}} {unit}<br>P(≤) %{{y:.2f}}<extra></extra>"),
                    row=1, col=col)  # fmt: skip
            fig.update_xaxes(title_text=f"{name} ({unit})", row=1, col=col)
    fig.update_yaxes(title_text="fraction of requests", row=1, col=1)
    fig.update_layout(title=title, height=420)
    return fig


def _ok(requests: pl.DataFrame) -> pl.DataFrame:
    return requests.filter(pl.col("status") == "ok")


def latency_over_time_figure(requests: pl.DataFrame) -> go.Figure | None:
    """TTFT and E2E of each completed request against its arrival, per tenant."""
    ok = _ok(requests)
    if ok.height == 0:
        return None
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, subplot_titles=["TTFT (ms)", "E2E (s)"],
                        vertical_spacing=0.08)  # fmt: skip
    for i, tenant in enumerate(sorted(ok["tenant"].unique().to_list())):
        part = ok.filter(pl.col("tenant") == tenant).sort("arrival_s")
        color = PALETTE[i % len(PALETTE)]
        for row, (col, scale) in enumerate((("ttft_s", 1e3), ("e2e_s", 1.0)), start=1):
            fig.add_trace(go.Scattergl(x=part["arrival_s"], y=part[col] * scale, mode="markers", name=tenant,
                                       legendgroup=tenant, showlegend=row == 1, marker=dict(size=4, color=color)),
                          row=row, col=1)  # fmt: skip
    fig.update_xaxes(title_text="arrival time (s)", row=2, col=1)
    fig.update_layout(title="latency over the run, by arrival", height=560)
    return fig


def engine_figure(samples: pl.DataFrame | None) -> go.Figure | None:
    """Batch size, engine queue and KV use over time per replica, as the engine sampled them."""
    if samples is None or samples.height == 0:
        return None
    panels = (("running", "batch size (requests running)"), ("waiting", "queued at the engine"),
              ("kv_used_fraction", "KV cache used (fraction)"))  # fmt: skip
    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, subplot_titles=[p[1] for p in panels], vertical_spacing=0.07)
    for i, replica in enumerate(sorted(samples["replica"].unique().to_list())):
        part = samples.filter(pl.col("replica") == replica)
        for row, (col, _) in enumerate(panels, start=1):
            fig.add_trace(go.Scatter(x=part["t_s"], y=part[col], mode="lines", line=dict(shape="hv",
                                     color=PALETTE[i % len(PALETTE)]), name=f"replica {replica}",
                                     legendgroup=str(replica), showlegend=row == 1), row=row, col=1)  # fmt: skip
    fig.update_xaxes(title_text="simulated time (s)", row=3, col=1)
    fig.update_layout(title="engine state, sampled by the engine after each step", height=700)
    return fig


_CSS = ("body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;font-size:13px}"
        "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}th{background:#f3f3f3}.note{color:#666}")  # fmt: skip


def page(title: str, parts: list[str]) -> str:
    """A whole HTML page around ``parts`` (fragments in order)."""
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>{''.join(parts)}</body></html>")  # fmt: skip


def write_run_report(run: str | os.PathLike | SimResult, path: str | os.PathLike, *,
                     samples: pl.DataFrame | None = None, title: str | None = None) -> Path:  # fmt: skip
    """Write the single-run report of ``run`` (a run folder or a result) to ``path``; return the path."""
    data = load_run(run, samples=samples)
    parts = ["<h2>summary</h2>", f"<div style='overflow-x:auto'>{table_html(summary_rows(data.summary))}</div>",
             "<p class='note'>TTFT, TPOT and ITL in milliseconds, E2E in seconds; goodput: completed requests "
             "meeting every SLO they carry, per second; ITL: each request's mean gap between tokens, weighted by "
             "its gaps.</p>"]  # fmt: skip
    figures = []
    if data.requests is not None:
        ok = _ok(data.requests)
        tenants = sorted(ok["tenant"].unique().to_list())
        groups = [(t, ok.filter(pl.col("tenant") == t)) for t in tenants] + ([("overall", ok)] if len(tenants) > 1 else [])
        figures += [cdf_figure(groups, "latency CDFs per tenant (completed requests)"),
                    latency_over_time_figure(data.requests)]  # fmt: skip
    else:
        parts.append("<p class='note'>This run kept only its summary: no per-request figures.</p>")
    figures.append(engine_figure(data.samples))
    if data.samples is None:
        parts.append(f"<p class='note'>No engine samples ({ENGINE_SAMPLES_FILE}) in this run: the engine's batch, "
                     "queue and KV use are recorded by <code>driftsim simulate --report</code>.</p>")
    parts += figures_html(figures)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, page(title or f"driftsim run {data.name}", parts))
    return out

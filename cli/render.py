"""Rich tables for the terminal: run summaries and trace inspections."""

from __future__ import annotations

import math

from rich.console import Console
from rich.table import Table

from sim.metrics import LATENCY_METRICS, STATS

_METRIC_LABELS = {"ttft_s": "TTFT", "tpot_s": "TPOT", "e2e_s": "E2E", "queue_wait_s": "queue wait"}


def _fmt_s(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if x < 1:
        return f"{x * 1000:.1f} ms"
    return f"{x:.2f} s"


def _fmt_pct(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f} %"


def summary_tables(summary: dict, title: str) -> list[Table]:
    """Two tables: volume/throughput/SLO per tenant, and latency statistics per tenant."""
    groups = [*summary["tenants"].items(), ("overall", summary["overall"])]
    volume = Table(title=title, title_justify="left")
    volume.add_column("tenant", no_wrap=True)
    for col in ("requests", "done", "refused", "req/s", "out tok/s", "SLO met", "preempt"):
        volume.add_column(col, justify="right", no_wrap=True)
    for name, g in groups:
        volume.add_row(
            f"[bold]{name}[/]" if name == "overall" else name,
            str(g["requests"]),
            str(g["completed"]),
            str(g["rejected"] + g["unfinished"]),
            f"{g['throughput_rps']:.2f}",
            f"{g['output_tokens_per_s']:.0f}",
            _fmt_pct(g["slo_attainment"]),
            str(g["preemptions"]),
            end_section=name == groups[-2][0],
        )
    latency = Table(title="latency per tenant (completed requests)", title_justify="left")
    latency.add_column("tenant", no_wrap=True)
    latency.add_column("metric", no_wrap=True)
    for s in STATS:
        latency.add_column(s, justify="right")
    for name, g in groups:
        for i, m in enumerate(LATENCY_METRICS):
            latency.add_row(
                (f"[bold]{name}[/]" if name == "overall" else name) if i == 0 else "",
                _METRIC_LABELS[m],
                *(_fmt_s(g[m][s]) for s in STATS),
                end_section=i == len(LATENCY_METRICS) - 1,
            )
    return [volume, latency]


def print_summary(console: Console, summary: dict, title: str) -> None:
    for table in summary_tables(summary, title):
        console.print(table)
    busy = ", ".join(f"replica {r['replica']}: {_fmt_pct(r['busy_fraction'])}" for r in summary["replicas"])
    console.print(
        f"engine busy fraction {_fmt_pct(summary['busy_fraction'])} ({busy}); "
        f"simulated span {summary['span_s']:.1f} s"
    )


def inspect_table(info: dict, title: str) -> list[Table]:
    """Tables for ``driftsim traces inspect``."""
    head = Table(title=title, title_justify="left", show_header=False)
    head.add_column("field")
    head.add_column("value", justify="right")
    for key in ("requests", "span_s", "rate_per_s", "prompt_share"):
        if key in info:
            v = info[key]
            head.add_row(key, f"{v:.3f}" if isinstance(v, float) else str(v))
    tables = [head]
    lengths = Table(title="token lengths", title_justify="left")
    lengths.add_column("")
    stats = None
    for which in ("input_tokens", "output_tokens"):
        d = info.get(which)
        if not isinstance(d, dict):
            continue
        if stats is None:
            stats = list(d)
            for s in stats:
                lengths.add_column(s, justify="right")
        lengths.add_row(which, *(_num(d[s]) for s in stats))
    tables.append(lengths)
    tenants = info.get("tenants")
    if tenants:
        t = Table(title="per tenant", title_justify="left")
        keys = sorted({k for v in tenants.values() for k in v if not isinstance(v[k], dict)})
        t.add_column("tenant")
        for k in keys:
            t.add_column(k, justify="right")
        for name, v in tenants.items():
            t.add_row(name, *(_num(v.get(k)) for k in keys))
        tables.append(t)
    return tables


def _num(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)

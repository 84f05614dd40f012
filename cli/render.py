"""Rich tables for the terminal: run summaries and trace inspections."""

from __future__ import annotations

import math
import os

from rich.console import Console
from rich.table import Table

from driftsim.sim.summary_fields import LATENCY_METRICS, STATS, bench_field

#: Columns of a console writing to a log or a pipe (rich's own default there is 80, which cuts the
#: wide validation and capacity tables down to "…" in every cell).
LOG_WIDTH = 200


def make_console(*, stderr: bool = False) -> Console:
    """A rich console: as wide as the terminal, or :data:`LOG_WIDTH` when the output is not one and
    ``COLUMNS`` does not say otherwise, so that redirected output keeps every table whole."""
    console = Console(stderr=stderr)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(stderr=stderr, width=LOG_WIDTH)
    return console


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
    clients = any(g.get("timeout") or g.get("abandoned") or g.get("retries") for _, g in groups)  # driftsim.sim.client
    if clients:
        for col in ("timeout", "abandoned", "retries"):
            volume.add_column(col, justify="right", no_wrap=True)
    for name, g in groups:
        extra = [str(g.get(k, 0)) for k in ("timeout", "abandoned", "retries")] if clients else []
        volume.add_row(
            f"[bold]{name}[/]" if name == "overall" else name,
            str(g["requests"]),
            str(g["completed"]),
            str(g["rejected"] + g["unfinished"]),
            f"{g['throughput_rps']:.2f}",
            f"{g['output_tokens_per_s']:.0f}",
            _fmt_pct(g["slo_attainment"]),
            str(g["preemptions"]),
            *extra,
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


#: Columns of the `vllm bench serve`-style table: (label, summary key, format).
BENCH_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("req/s", "throughput_rps", "rate"),
    ("goodput/s", "goodput_rps", "rate"),
    ("SLO met", "slo_attainment", "pct"),
    ("in tok/s", "input_tokens_per_s", "tokens"),
    ("out tok/s", "output_tokens_per_s", "tokens"),
    *((f"{m.upper()} {s} {u}", bench_field(m, s), "num") for m, u, stats in (
        ("ttft", "ms", ("p50", "p95", "p99")), ("tpot", "ms", ("p50", "p95")), ("itl", "ms", ("p50", "p95")),
        ("e2e", "s", ("p50", "p95", "p99"))) for s in stats),
)  # fmt: skip


def _fmt_bench(x, kind: str) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if kind == "pct":
        return _fmt_pct(x)
    if kind == "tokens":
        return f"{x:.0f}"
    if kind == "rate":
        return f"{x:.2f}"
    return f"{x:.1f}" if abs(x) >= 10 else f"{x:.3g}"


def bench_table(rows: list[tuple[str, dict]], title: str) -> Table:
    """`vllm bench serve`'s figures, one row per (label, summary group): latencies in the unit the header names,
    SLO attainment in percent."""
    t = Table(title=title, title_justify="left")
    t.add_column("", no_wrap=True)
    for label, _, _ in BENCH_COLUMNS:
        t.add_column(label, justify="right", no_wrap=True)
    for label, g in rows:
        t.add_row(label, *(_fmt_bench(g.get(key), kind) for _, key, kind in BENCH_COLUMNS))
    return t


def prefix_table(summary: dict) -> Table | None:
    """Prefix-cache hits per tenant and per replica; None when no request carried prefix identity."""
    replicas = summary["replicas"]
    if not any(r.get("prefix_lookups") for r in replicas):
        return None
    t = Table(title="prefix cache (prompt tokens found cached; requests that hit)", title_justify="left")
    for col in ("", "cached tokens", "token hit rate", "request hit rate", "evictions"):
        t.add_column(col, justify="left" if not col else "right", no_wrap=True)
    groups = [*summary["tenants"].items(), ("overall", summary["overall"])]
    for name, g in groups:
        t.add_row(f"[bold]{name}[/]" if name == "overall" else name, str(g.get("prefix_cached_tokens", 0)),
                  _fmt_pct(g.get("prefix_token_hit_rate")), _fmt_pct(g.get("prefix_request_hit_rate")), "",
                  end_section=name == "overall")
    for r in replicas:
        t.add_row(f"replica {r['replica']}", str(r.get("prefix_hit_tokens", 0)), _fmt_pct(r.get("prefix_token_hit_rate")),
                  "", str(r.get("prefix_evictions", 0)))
    return t


def print_summary(console: Console, summary: dict, title: str) -> None:
    for table in summary_tables(summary, title):
        console.print(table)
    prefix = prefix_table(summary)
    if prefix is not None:
        console.print(prefix)
    busy = ", ".join(f"replica {r['replica']}: {_fmt_pct(r['busy_fraction'])}" for r in summary["replicas"])
    console.print(
        f"engine busy fraction {_fmt_pct(summary['busy_fraction'])} ({busy}); "
        f"simulated span {summary['span_s']:.1f} s"
    )


def print_estimation(console: Console, est: dict, regret: dict | None) -> None:
    """Estimation error (when an estimator other than the oracle ran) and the regret to the oracle."""
    if est.get("estimator") not in (None, "oracle") and est.get("completed"):
        t = Table(
            title=f"output-length estimates: {est['estimator']}, {est['counter']} counter, "
            f"calibration {'on' if est['calibration'] else 'off'}",
            title_justify="left",
        )
        for c in ("category", "requests", "MAE", "RMSE"):
            t.add_column(c, justify="left" if c == "category" else "right", no_wrap=True)
        for cat, v in est["by_category"].items():
            t.add_row(cat, str(v["requests"]), f"{v['mae']:.1f}", f"{v['rmse']:.1f}")
        t.add_row("[bold]overall[/]", str(est["completed"]), f"{est['mae']:.1f}", f"{est['rmse']:.1f}")
        console.print(t)
        console.print(f"job-size misclassification: {_fmt_pct(est['misclassification_rate'])}")
    if regret:
        t = Table(title="regret: latency minus the oracle's (real lengths known)", title_justify="left")
        t.add_column("tenant", no_wrap=True)
        for c in ("E2E mean", "E2E p50", "E2E p99", "TTFT p99"):
            t.add_column(c, justify="right", no_wrap=True)
        for name, v in regret.items():
            t.add_row(name, *(_fmt_signed(v[k]) for k in ("e2e_s:mean", "e2e_s:p50", "e2e_s:p99", "ttft_s:p99")))
        console.print(t)


def _fmt_signed(x: float) -> str:
    if x is None or math.isnan(x):
        return "-"
    return ("+" if x >= 0 else "-") + _fmt_s(abs(x))


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
        columns = {"requests": "requests", "share": "share", "rate_per_s": "req/s",
                   "mean_input_tokens": "mean in", "mean_output_tokens": "mean out"}
        t.add_column("tenant", no_wrap=True)
        for label in columns.values():
            t.add_column(label, justify="right", no_wrap=True)
        for name, v in tenants.items():
            t.add_row(name, *(_num(v.get(k)) for k in columns))
        tables.append(t)
    return tables


def _num(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v.is_integer():
            return f"{v:.0f}"
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)

"""Tidy tables from run outcomes, confidence intervals across seeds, and the results folder.

A :class:`ResultSet` holds:

- ``table``: one row per run x tenant (and ``overall``): axis values, pool,
  seed, every metric (see :func:`driftsim.capacity.runner.summary_rows`), plus
  ``gpu_hour_usd`` and ``usd_per_m_output_tokens`` when prices are known;
- ``runs``: one row per run: label, config, ok, error, wall and CPU seconds, attempts, worker;
- ``checks``: SLO targets evaluated per run x tenant;
- ``timeseries`` and ``cdf``: long tables for the report (first seed of each configuration);
- ``meta``: the study (grid, prices, targets, executor, wall time).

:func:`aggregate` turns ``table`` into mean and 95 % t-interval per
configuration x tenant x metric across seeds (long format: one row each).

A results folder holds ``results.parquet`` (or ``.csv``), ``summary``,
``runs``, ``checks``, ``timeseries``, ``cdf`` in the same format, and ``meta.json``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from driftsim.capacity.runner import CDF_PROBS, RunOutcome
from driftsim.capacity.stats import mean_ci
from driftsim.sim.atomic import atomic_write, atomic_write_text
from driftsim.sim.metrics import LATENCY_METRICS, STATS

#: Metrics that get a confidence interval across seeds.
CI_METRICS: tuple[str, ...] = (
    "throughput_rps", "output_tokens_per_s", "offered_rps", "slo_attainment", "ttft_attainment", "e2e_attainment",
    *(f"{m}_{s}" for m in LATENCY_METRICS for s in STATS), "busy_fraction", "preemptions", "rejected", "unfinished",
    "usd_per_m_output_tokens",
)  # fmt: skip
#: Columns that identify a row but are not axes or metrics.
ID_COLUMNS = ("index", "config", "label", "profile", "gpu", "replicas", "seed", "tenant")
TABLES = ("results", "summary", "runs", "checks", "timeseries", "cdf")


@dataclass
class ResultSet:
    table: pl.DataFrame
    runs: pl.DataFrame
    checks: pl.DataFrame = field(default_factory=pl.DataFrame)
    timeseries: pl.DataFrame = field(default_factory=pl.DataFrame)
    cdf: pl.DataFrame = field(default_factory=pl.DataFrame)
    meta: dict = field(default_factory=dict)

    @property
    def axes(self) -> list[str]:
        return list(self.meta.get("axes", {}))

    @property
    def failed(self) -> pl.DataFrame:
        return self.runs.filter(~pl.col("ok")) if self.runs.height else self.runs

    def summary(self, confidence: float = 0.95) -> pl.DataFrame:
        return aggregate(self.table, confidence=confidence)

    # ------------------------------------------------------------------ building
    @classmethod
    def from_outcomes(cls, outcomes: list[RunOutcome], *, meta: dict | None = None, prices: dict | None = None) -> ResultSet:
        """Gather outcomes (any order) into tables; ``prices`` ($/GPU-hour by profile) add cost columns."""
        outcomes = sorted(outcomes, key=lambda o: o.index)
        rows = [r for o in outcomes for r in o.rows]
        table = pl.DataFrame(rows, infer_schema_length=None) if rows else pl.DataFrame()
        if prices and table.height:
            table = add_costs(table, prices)
        runs = pl.DataFrame(
            [{
                "index": o.index, "label": o.label, "config": o.config, "ok": o.ok, "error": o.error,
                "wall_s": o.wall_s, "cpu_s": o.cpu_s, "attempts": o.attempts, "worker": o.worker,
            } for o in outcomes],
            schema={"index": pl.Int64, "label": pl.String, "config": pl.String, "ok": pl.Boolean, "error": pl.String,
                    "wall_s": pl.Float64, "cpu_s": pl.Float64, "attempts": pl.Int64, "worker": pl.String},
        )  # fmt: skip
        checks = [dict(c, index=o.index, config=o.config, label=o.label, seed=o.params.get("seed")) for o in outcomes for c in o.checks]
        ts_rows, cdf_rows = [], []
        for o in outcomes:
            if o.timeseries and o.timeseries["t_s"]:
                ts = o.timeseries
                for tenant in ts["queue_depth"]:
                    ts_rows.append(pl.DataFrame({
                        "t_s": ts["t_s"], "queue_depth": ts["queue_depth"][tenant], "running": ts["running"][tenant],
                        "kv_usage": ts["kv_usage"] if tenant == "overall" else [None] * len(ts["t_s"]),
                    }, schema={"t_s": pl.Float64, "queue_depth": pl.Int64, "running": pl.Int64, "kv_usage": pl.Float64}
                    ).with_columns(pl.lit(o.index).alias("index"), pl.lit(o.config).alias("config"), pl.lit(tenant).alias("tenant")))
            if o.cdf:
                for tenant, metrics in o.cdf.items():
                    for metric, values in metrics.items():
                        cdf_rows.append(pl.DataFrame({"prob": CDF_PROBS, "value_s": values}).with_columns(
                            pl.lit(o.index).alias("index"), pl.lit(o.config).alias("config"), pl.lit(tenant).alias("tenant"),
                            pl.lit(metric).alias("metric")))  # fmt: skip
        return cls(
            table=table, runs=runs, checks=pl.DataFrame(checks, infer_schema_length=None) if checks else pl.DataFrame(),
            timeseries=pl.concat(ts_rows) if ts_rows else pl.DataFrame(),
            cdf=pl.concat(cdf_rows) if cdf_rows else pl.DataFrame(), meta=dict(meta or {}, prices=prices or {}),
        )  # fmt: skip

    # ------------------------------------------------------------------ files
    def save(self, folder: str | Path, fmt: str = "parquet") -> Path:
        """Write every table (``parquet`` or ``csv``) and ``meta.json`` to ``folder``."""
        if fmt not in ("parquet", "csv"):
            raise ValueError(f"--format: expected parquet or csv, got {fmt!r}")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tables = {"results": self.table, "summary": self.summary(), "runs": self.runs, "checks": self.checks,
                  "timeseries": self.timeseries, "cdf": self.cdf}
        for name, df in tables.items():
            path = folder / f"{name}.{fmt}"
            atomic_write(path, df.write_parquet if fmt == "parquet" else df.write_csv)
        atomic_write_text(folder / "meta.json", json.dumps(dict(self.meta, format=fmt), indent=2, default=str,
                                                           allow_nan=True))
        return folder

    @classmethod
    def load(cls, path: str | Path) -> ResultSet:
        """Read a results folder (or its ``results.parquet`` / ``results.csv``)."""
        path = Path(path)
        folder = path.parent if path.is_file() else path
        if not folder.is_dir():
            raise FileNotFoundError(f"{path}: no such results folder (expected the folder `driftsim sweep` wrote)")
        fmt = "parquet" if (folder / "results.parquet").exists() else "csv" if (folder / "results.csv").exists() else None
        if fmt is None:
            raise FileNotFoundError(f"{folder}: no results.parquet or results.csv here; is it a `driftsim sweep` output folder?")

        def read(name: str) -> pl.DataFrame:
            p = folder / f"{name}.{fmt}"
            if not p.exists():
                return pl.DataFrame()
            try:
                return pl.read_parquet(p) if fmt == "parquet" else pl.read_csv(p, infer_schema_length=None)
            except pl.exceptions.NoDataError:
                return pl.DataFrame()

        meta = json.loads((folder / "meta.json").read_text()) if (folder / "meta.json").exists() else {}
        return cls(table=read("results"), runs=read("runs"), checks=read("checks"), timeseries=read("timeseries"),
                   cdf=read("cdf"), meta=meta)


def pool_price(profile: str, replicas: int, prices: dict) -> float:
    """$/hour of a pool named like ``a100-llama-3.1-8b:2+h100-llama-3.1-8b:1`` (mixed) or a profile with ``replicas`` replicas."""
    if "+" in profile:
        total = 0.0
        for part in profile.split("+"):
            name, _, n = part.rpartition(":")
            if name not in prices:
                return math.nan
            total += prices[name] * int(n)
        return total
    return prices[profile] * replicas if profile in prices else math.nan


def add_costs(table: pl.DataFrame, prices: dict) -> pl.DataFrame:
    """``gpu_hour_usd`` (the pool's $/hour) and ``usd_per_m_output_tokens`` (over the run's span, all tenants' tokens).

    The pool is charged for the run's span (first arrival to last
    completion); every tenant row carries the pool's cost per million
    output tokens (a tenant's share of GPU time is not separable).
    """
    usd = [pool_price(p, r, prices) for p, r in zip(table["profile"].to_list(), table["replicas"].to_list())]
    table = table.with_columns(pl.Series("gpu_hour_usd", usd, dtype=pl.Float64))
    overall = table.filter(pl.col("tenant") == "overall").select(
        "index", (pl.col("gpu_hour_usd") * pl.col("span_s") / 3600 / (pl.col("output_tokens") / 1e6)).alias("usd_per_m_output_tokens")
    )
    return table.join(overall, on="index", how="left")


def aggregate(table: pl.DataFrame, *, confidence: float = 0.95, metrics: tuple[str, ...] = CI_METRICS) -> pl.DataFrame:
    """Mean and t-interval across seeds per configuration x tenant x metric (long format).

    Columns: the configuration's identifying columns (``config``, axis
    values, ``profile``, ``gpu``, ``replicas``), ``tenant``, ``metric``,
    ``n`` (seeds with a finite value), ``mean``, ``std``, ``ci_low``,
    ``ci_high``, ``half_width``.
    """
    if table.height == 0:
        return pl.DataFrame()
    keys = [c for c in table.columns if c not in ID_COLUMNS and c not in metrics and not _is_metric(c)]
    keys = ["config", *keys, "profile", "gpu", "replicas", "tenant"]
    keys = [k for k in dict.fromkeys(keys) if k in table.columns]
    present = [m for m in metrics if m in table.columns]
    out = []
    for group_key, part in table.group_by(keys, maintain_order=True):
        ident = dict(zip(keys, group_key))
        for m in present:
            ci = mean_ci(part[m].cast(pl.Float64).to_list(), confidence)
            out.append(dict(ident, metric=m, n=ci.n, mean=ci.mean, std=ci.std, ci_low=ci.low, ci_high=ci.high, half_width=ci.half_width))
    return pl.DataFrame(out, infer_schema_length=None)


_OTHER_METRICS = {
    "requests", "completed", "slo_requests", "output_tokens", "slo_ttft_s", "slo_e2e_s", "span_s", "wall_s", "gpu_hour_usd",
}


def _is_metric(col: str) -> bool:
    return col in _OTHER_METRICS or col in CI_METRICS

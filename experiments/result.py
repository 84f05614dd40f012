"""What the DriftSched experiment grid produces: the one result type its runner, headline and report share."""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

#: The tenant label of a run's whole-run row.
OVERALL = "overall"


@dataclass
class ExperimentResult:
    """Everything the grid produced.

    ``table``: one row per (seed, policy, counter, calibration, tenant),
    ``tenant == "overall"`` for the whole run; latencies in seconds,
    estimation errors in the counter's units (words or tokens);
    ``jain_e2e`` (Jain's index over the tenants' mean E2E), ``span_s``,
    ``busy_fraction``, ``learning_drain_s`` (when the learning phase alone
    drains; NaN with ``pause="fixed"``) and ``stress_start_s`` (where phase
    2's first gap starts) are per run, repeated on its rows.
    ``requests``: per-request results of ``meta["representative_seed"]``
    for every configuration. ``bias_history``: the calibrator's bias after
    every completion (calibration on only) for that seed. ``final_bias``:
    each run's final bias per category (calibration on, every seed).
    ``headline``: :func:`driftsim.experiments.headline.compute_headline`.
    ``beyond``: the same row shape, keyed by (seed, policy, estimator), for
    runs beyond the paper: the oracle (real lengths known: the regret
    baseline) and the learned predictor, both in token units, under the
    policies whose order reads the estimates (``BEYOND_POLICIES``).
    """

    table: pl.DataFrame
    requests: pl.DataFrame
    bias_history: pl.DataFrame
    final_bias: pl.DataFrame
    meta: dict
    headline: dict = field(default_factory=dict)
    beyond: pl.DataFrame = field(default_factory=pl.DataFrame)

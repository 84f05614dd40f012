"""What ``driftsim reproduce driftsched`` leaves in its folder: the grid's table, the headline and the HTML report."""

from __future__ import annotations

import json
from pathlib import Path

from driftsim.experiments.driftsched import headline_table
from driftsim.experiments.report import write_report
from driftsim.experiments.result import ExperimentResult
from driftsim.sim.atomic import atomic_write_parquet, atomic_write_text
from driftsim.sim.scenario_folder import json_default


def save_reproduction(result: ExperimentResult, folder: Path) -> list[dict]:
    """Write ``results.parquet``, ``headline.json`` and ``report.html`` into ``folder``; returns the headline rows."""
    rows = headline_table(result)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_parquet(folder / "results.parquet", result.table)
    atomic_write_text(folder / "headline.json", json.dumps({"headline": result.headline, "table": rows,
                                                            "meta": result.meta}, indent=2, default=json_default))
    write_report(result, folder / "report.html")
    return rows

"""Experiments: grids of simulations that reproduce a paper's results, with tables and reports.

- :mod:`driftsim.experiments.driftsched`: the DriftSched paper's grid (seeds x
  policies x counters x calibration) and its tidy result table.
- :mod:`driftsim.experiments.headline`: the paper's headline numbers next to driftsim's.
- :mod:`driftsim.experiments.report`: a self-contained interactive HTML report.
- :mod:`driftsim.experiments.fairness`: Jain's fairness index.
"""

from driftsim.experiments.driftsched import headline_table, run_driftsched_experiment
from driftsim.experiments.fairness import jain_index
from driftsim.experiments.result import ExperimentResult

__all__ = ["ExperimentResult", "headline_table", "jain_index", "run_driftsched_experiment"]

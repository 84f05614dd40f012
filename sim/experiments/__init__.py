"""Experiments: grids of simulations that reproduce a paper's results, with tables and reports.

- :mod:`sim.experiments.driftsched`: the DriftSched paper's grid (seeds x
  policies x counters x calibration) and its tidy result table.
- :mod:`sim.experiments.headline`: the paper's headline numbers next to driftsim's.
- :mod:`sim.experiments.report`: a self-contained interactive HTML report.
- :mod:`sim.experiments.fairness`: Jain's fairness index.
"""

from sim.experiments.driftsched import ExperimentResult, headline_table, run_driftsched_experiment
from sim.experiments.fairness import jain_index

__all__ = ["ExperimentResult", "headline_table", "jain_index", "run_driftsched_experiment"]

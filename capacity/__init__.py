"""Capacity planning on top of the simulator: sweeps, inverse questions, reports.

A *run spec* (:class:`~driftsim.capacity.spec.RunSpec`) is a scenario-override
dict plus a label; a :class:`~driftsim.capacity.spec.Grid` expands
deterministically into specs; :func:`~driftsim.capacity.runner.execute` turns one
spec into a small flat record (one row per tenant and ``overall``, never the
per-request table). Runs are pure functions of their spec (seeded), so any
executor may run them anywhere and retry them safely:

- :class:`~driftsim.capacity.pool.SerialPool` (in this process),
  :class:`~driftsim.capacity.pool.LocalPool` (every local core, processes),
  :class:`~driftsim.capacity.pool.RayPool` (an existing Ray cluster, or a local
  Ray instance), all behind one interface (``imap_unordered`` / ``run``).
- :mod:`driftsim.capacity.results` gathers outcomes into tidy tables with 95 %
  t-intervals across seeds; :mod:`driftsim.capacity.plan` answers "fewest
  replicas", "highest load", "cheapest GPU mix" and "best policy" by
  search; :mod:`driftsim.capacity.report` writes a self-contained HTML report.

See CAPACITY.md for the design and its approximations.
"""

from driftsim.capacity.pool import LocalPool, RayPool, SerialPool, make_pool
from driftsim.capacity.results import ResultSet, aggregate
from driftsim.capacity.runner import RunOutcome, execute
from driftsim.capacity.slo import Target, parse_slo
from driftsim.capacity.spec import Grid, RunSpec, expand
from driftsim.capacity.stats import mean_ci

__all__ = [
    "Grid", "RunSpec", "expand", "RunOutcome", "execute", "SerialPool", "LocalPool", "RayPool", "make_pool",
    "ResultSet", "aggregate", "Target", "parse_slo", "mean_ci",
]

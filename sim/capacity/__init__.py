"""Capacity planning on top of the simulator: sweeps, inverse questions, reports.

A *run spec* (:class:`~sim.capacity.spec.RunSpec`) is a scenario-override
dict plus a label; a :class:`~sim.capacity.spec.Grid` expands
deterministically into specs; :func:`~sim.capacity.runner.execute` turns one
spec into a small flat record (one row per tenant and ``overall``, never the
per-request table). Runs are pure functions of their spec (seeded), so any
executor may run them anywhere and retry them safely:

- :class:`~sim.capacity.pool.SerialPool` (in this process),
  :class:`~sim.capacity.pool.LocalPool` (every local core, processes),
  :class:`~sim.capacity.pool.RayPool` (an existing Ray cluster, or a local
  Ray instance), all behind one interface (``imap_unordered`` / ``run``).
- :mod:`sim.capacity.results` gathers outcomes into tidy tables with 95 %
  t-intervals across seeds; :mod:`sim.capacity.plan` answers "fewest
  replicas", "highest load", "cheapest GPU mix" and "best policy" by
  search; :mod:`sim.capacity.report` writes a self-contained HTML report.

See CAPACITY.md for the design and its approximations.
"""

from sim.capacity.pool import LocalPool, RayPool, SerialPool, make_pool
from sim.capacity.results import ResultSet, aggregate
from sim.capacity.runner import RunOutcome, execute
from sim.capacity.slo import Target, parse_slo
from sim.capacity.spec import Grid, RunSpec, expand
from sim.capacity.stats import mean_ci

__all__ = [
    "Grid", "RunSpec", "expand", "RunOutcome", "execute", "SerialPool", "LocalPool", "RayPool", "make_pool",
    "ResultSet", "aggregate", "Target", "parse_slo", "mean_ci",
]

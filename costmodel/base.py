"""The cost-model contract: how long one engine iteration takes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from driftsim.costmodel.batch import StepBatch


@runtime_checkable
class CostModel(Protocol):
    """Time of one engine iteration as a function of the batch it runs.

    Contract:
    - ``step_time(batch)`` returns seconds, a finite float > 0, for any batch
      with at least one token; it includes the per-step CPU/scheduler overhead.
    - ``decode_run_times(num_seqs, ctx_tokens, k)`` returns a float64 array of
      the k durations of k consecutive pure-decode steps of ``num_seqs``
      sequences whose context sum is ``ctx_tokens`` at the first step and
      grows by ``num_seqs`` each step. Element j must equal, bit for bit,
      ``step_time(StepBatch(decode_seqs=num_seqs, decode_ctx_tokens=ctx_tokens + j*num_seqs))``
      so that fast-forwarded runs equal step-by-step ones.
    - ``kv_capacity_blocks(block_size)`` returns the number of KV blocks the
      engine has on this GPU for this model.
    - ``describe()`` returns a dict for reports (name, provenance, parameters).
    """

    def step_time(self, batch: StepBatch) -> float: ...

    def decode_run_times(self, num_seqs: int, ctx_tokens: int, k: int) -> np.ndarray: ...

    def kv_capacity_blocks(self, block_size: int) -> int: ...

    def describe(self) -> dict: ...


@dataclass(frozen=True)
class StepFormula:
    """A cost model's step time as one of the closed forms the compiled core evaluates
    (:mod:`driftsim.sim.stepcore`): ``kind`` names the form ("roofline", "linear", "token-table"),
    ``coefficients`` its scalars in the order the form reads them, ``knots``/``values`` its
    piecewise-linear table (empty without one).

    Optional: a cost model offering ``step_formula()`` promises that the form, evaluated with the
    same operations in the same order, gives its ``step_time`` bit for bit; one without it (a
    wrapper, a learned model) runs on the Python engine.
    """

    kind: str
    coefficients: tuple[float, ...]
    knots: tuple[float, ...] = ()
    values: tuple[float, ...] = ()

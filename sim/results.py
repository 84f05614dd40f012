"""Per-request results, recorded into columns as requests finish.

Nothing is kept per request but a few numbers in preallocated arrays, so a
run's memory does not depend on how many requests have finished. The final
table is one flat polars DataFrame, one row per trace request.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from driftsim.sim.request import SimRequest

STATUS_PENDING, STATUS_OK, STATUS_REJECTED, STATUS_UNFINISHED = 0, 1, 2, 3
STATUS_TIMEOUT, STATUS_ABANDONED = 4, 5  # the client gave up (driftsim.sim.client)
_STATUS_NAMES = ["pending", "ok", "rejected", "unfinished", "timeout", "abandoned"]
STATUS = pl.Enum(_STATUS_NAMES)
FINISH_REASON = pl.Enum(["stop", "length"])


def _from_codes(codes: np.ndarray, enum: pl.Enum) -> pl.Series:
    """An Enum column from integer codes (1 byte per row; gathering the Enum's own categories never
    materialises a string per row)."""
    return enum.categories.cast(enum).gather(codes.astype(np.uint32))


class ResultRecorder:
    """Columnar store for the outcome of every request in a trace."""

    def __init__(self, n: int, base: int = 0) -> None:
        self.base = base  # trace row of this recorder's first row (a chunk of a streamed trace starts later)
        self.status = np.zeros(n, dtype=np.int8)
        self.replica = np.full(n, -1, dtype=np.int32)
        self.scheduled_s = np.full(n, np.nan)
        self.first_token_s = np.full(n, np.nan)
        self.finish_s = np.full(n, np.nan)
        self.generated = np.zeros(n, dtype=np.int32)
        self.preemptions = np.zeros(n, dtype=np.int32)
        self.cached_tokens = np.zeros(n, dtype=np.int32)  # prompt tokens found in the prefix cache at first admission
        self.length_capped = np.zeros(n, dtype=bool)
        self.attempts = np.ones(n, dtype=np.int16)  # > 1 only with client retries (driftsim.sim.client)
        self.reasons: dict[int, str] = {}

    def finish(self, req: SimRequest, t: float, replica: int) -> None:
        i = req.idx - self.base
        self.status[i] = STATUS_OK
        self.replica[i] = replica
        self.scheduled_s[i] = req.scheduled_s
        self.first_token_s[i] = req.first_token_s
        self.finish_s[i] = t
        self.generated[i] = req.generated
        self.preemptions[i] = req.preemptions
        if req.cached_tokens > 0:
            self.cached_tokens[i] = req.cached_tokens

    def finish_rows(self, i: np.ndarray, replica: np.ndarray, scheduled_s: np.ndarray, first_token_s: np.ndarray,
                    finish_s: np.ndarray, generated: np.ndarray, preemptions: np.ndarray,
                    cached_tokens: np.ndarray) -> None:
        """:meth:`finish` for the trace rows ``i``."""
        i = i - self.base
        self.status[i] = STATUS_OK
        self.replica[i] = replica
        self.scheduled_s[i] = scheduled_s
        self.first_token_s[i] = first_token_s
        self.finish_s[i] = finish_s
        self.generated[i] = generated
        self.preemptions[i] = preemptions
        self.cached_tokens[i] = cached_tokens

    def give_up(self, idx: int, status: int, reason: str, generated: int = 0) -> None:
        """The client gave up on the request (``STATUS_TIMEOUT`` or ``STATUS_ABANDONED``)."""
        idx -= self.base
        self.status[idx] = status
        self.generated[idx] = generated
        self.reasons[idx] = reason

    def reject(self, idx: int, reason: str) -> None:
        idx -= self.base
        self.status[idx] = STATUS_REJECTED
        self.reasons[idx] = reason

    def cap_length(self, idx: int) -> None:
        """The request's output was cut to its max_tokens or the model length."""
        self.length_capped[idx - self.base] = True

    def mark_unfinished(self) -> int:
        """Label requests still in flight when the run stopped; return how many."""
        pending = self.status == STATUS_PENDING
        self.status[pending] = STATUS_UNFINISHED
        for i in np.flatnonzero(pending):
            self.reasons[int(i)] = "unfinished at the simulation horizon"
        return int(pending.sum())

    def _latencies(self, arrival_s: np.ndarray) -> list[pl.Series]:
        """Queue wait, TTFT, E2E and TPOT in seconds for every row, valid or not (``to_frame`` masks them).

        NOTE: memory. The same float operations as polars' column arithmetic, in numpy: ``when(ok).then``
        over a finished column adds only a validity mask, whereas over a polars expression it holds the
        expression's result and its masked copy at once (~30 MB more at 1M requests).
        """
        queue_wait = self.scheduled_s - arrival_s
        ttft = self.first_token_s - arrival_s
        e2e = self.finish_s - arrival_s
        gaps = self.generated.astype(np.float64)
        gaps -= 1.0  # in place here and below: the same operations without a temporary array each
        tpot = e2e - ttft
        with np.errstate(divide="ignore", invalid="ignore"):  # one token or none: no gap (masked)
            tpot /= gaps
        del gaps
        return [pl.Series("queue_wait_s", queue_wait), pl.Series("ttft_s", ttft), pl.Series("e2e_s", e2e),
                pl.Series("tpot_s", tpot)]

    def to_frame(self, trace: pl.DataFrame) -> pl.DataFrame:
        """Join the recorded columns onto the trace rows, with derived latencies (seconds)."""
        n = trace.height
        reason = pl.repeat(None, n, dtype=pl.String, eager=True)
        if self.reasons:
            reason = reason.scatter(list(self.reasons), list(self.reasons.values()))
        status = _from_codes(self.status, STATUS)
        df = trace.select(
            "request_id", "tenant", "arrival_s", "input_tokens", "output_tokens", "slo_ttft_s", "slo_e2e_s"
        ).with_columns(
            status.alias("status"),
            reason.alias("reason"),
            pl.Series("replica", self.replica),
            pl.Series("generated_tokens", self.generated),
            _from_codes(self.length_capped, FINISH_REASON).alias("finish_reason"),
            pl.Series("preemptions", self.preemptions),
            pl.Series("cached_tokens", self.cached_tokens),
            pl.Series("attempts", self.attempts),
            pl.Series("scheduled_s", self.scheduled_s),
            pl.Series("first_token_s", self.first_token_s),
            pl.Series("finish_s", self.finish_s),
        )
        ok = pl.col("status") == "ok"
        queue_wait, ttft, e2e, tpot = self._latencies(trace["arrival_s"].to_numpy())
        df = df.with_columns(pl.when(ok).then(queue_wait), pl.when(ok).then(ttft), pl.when(ok).then(e2e),
                             pl.when(ok & (pl.col("generated_tokens") > 1)).then(tpot))
        if df["slo_ttft_s"].null_count() == n and df["slo_e2e_s"].null_count() == n:  # no SLOs: no outcome
            # NOTE: the comparisons below would materialise ~38 MB at 1M requests to yield only nulls
            return df.with_columns(pl.repeat(None, n, dtype=pl.Boolean, eager=True).alias("slo_met"))
        has_slo = pl.col("slo_ttft_s").is_not_null() | pl.col("slo_e2e_s").is_not_null()
        met = (
            ok
            & (pl.col("slo_ttft_s").is_null() | (pl.col("ttft_s") <= pl.col("slo_ttft_s")))
            & (pl.col("slo_e2e_s").is_null() | (pl.col("e2e_s") <= pl.col("slo_e2e_s")))
        )
        return df.with_columns(pl.when(has_slo).then(met).alias("slo_met"))

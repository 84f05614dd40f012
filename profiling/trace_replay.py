"""Replaying a trace on a real engine through the real gateway, optionally through a journal.

Before a measured replay: :func:`warm_up` (first requests on a fresh vLLM
build kernels and caches) and :func:`probe_overhead` (1-token requests on
the idle server, whose TTFT beyond the cost model's prefill step is the
client, HTTP and API-server overhead). :func:`replay` runs one fitted trace
through :class:`driftsim.profiling.gateway.ReplayGateway` running a driftsim
policy.

:func:`replay_journaled` is the same replay with every finished request
appended to a journal (:class:`driftsim.profiling.journal.ReplayJournal`).
With ``resume`` it keeps the requests already finished (``ok``,
``timeout``, ``abandoned``, ``skipped``) and replays the rest (never sent,
cancelled, or failed with an error, e.g. because the server died), on a
clock that starts at the first of them and is shifted back onto the
original timeline. Those requests see less load near the resume point than
they would have: the requests finished before the crash are not in flight
again. Session turns keep their closed loop across the kill: a turn whose
previous turn is in the journal is sent ``think_s`` after that turn settled
(as the journal has it), one whose previous turn is replayed again waits for
its new answer, exactly as in an uninterrupted replay. :func:`journal_frame` rebuilds a replay's frame from its journal
alone, without a server.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import polars as pl

from driftsim.profiling.gateway import (STATUS_NOT_SENT, STATUS_OK, MicroBatch, ReplayGateway, ReplayRequest,
                                        RequestFailed, RequestRecord, StreamingClient, next_turns, prompt_ids,
                                        records_frame, run_replay)
from driftsim.profiling.http import EndpointError, OpenAIClient
from driftsim.profiling.journal import KEEP_ON_RESUME, JournalError, ReplayJournal, read_journal, record_from_row, trace_key
from driftsim.sim.config import GatewayConfig
from driftsim.sim.policies import make_policy


def warm_up(client: OpenAIClient, model: str, *, vocab_size: int, max_model_len: int, seed: int = 0) -> float:
    """A few concurrent requests of assorted lengths (discarded); returns the seconds it took."""
    lens = [(16, 8), (min(256, max_model_len // 4), 16), (min(512, max_model_len // 2), 4), (64, 32), (128, 8), (32, 24)]

    async def go() -> None:
        sc = StreamingClient(client, model=model, clock=time.perf_counter)
        async with sc.async_client(len(lens)) as ac:
            recs = [RequestRecord(idx=i, request_id=i, tenant="warm-up", input_tokens=p, output_tokens=o, intended_s=0)
                    for i, (p, o) in enumerate(lens)]
            await asyncio.gather(*(sc.stream(ac, prompt_ids(10_000 + i, p, vocab_size=vocab_size, seed=seed), o, r)
                                   for i, ((p, o), r) in enumerate(zip(lens, recs))), return_exceptions=True)

    t = time.perf_counter()
    asyncio.run(go())
    return time.perf_counter() - t


def probe_overhead(client: OpenAIClient, model: str, *, vocab_size: int, prompt_lens: tuple[int, ...] = (16, 128, 384),
                   n: int = 4, seed: int = 0) -> list[tuple[int, float]]:
    """``(prompt_len, TTFT)`` of 1-token requests, one at a time on an idle server, ``n`` per prompt length.

    Several lengths, so that the overhead (what is left after the cost
    model's prefill step) does not rest on the model's error at one size.
    """
    async def go() -> list[tuple[int, float]]:
        sc = StreamingClient(client, model=model, clock=time.perf_counter)
        out = []
        async with sc.async_client(1) as ac:
            for i in range(n):
                for j, p in enumerate(prompt_lens):
                    rec = RequestRecord(idx=0, request_id=0, tenant="probe", input_tokens=p, output_tokens=1,
                                        intended_s=0)
                    ids = prompt_ids(20_000 + i * len(prompt_lens) + j, p, vocab_size=vocab_size, seed=seed)
                    try:
                        await sc.stream(ac, ids, 1, rec)
                    except RequestFailed as exc:
                        raise EndpointError(f"the overhead probe failed: {exc}") from None
                    out.append((p, rec.first_token_s - rec.sent_s))
                    await asyncio.sleep(0.05)
        return out

    return asyncio.run(go())


def replay_requests(trace: pl.DataFrame) -> list[ReplayRequest]:
    """Gateway requests from a fitted trace (oracle estimates: est_tokens = input + output), with their
    prefix identity (the prompts share what the trace says) and sessions (turns sent closed-loop)."""
    rows = trace.select("request_id", "arrival_s", "tenant", "priority", "input_tokens", "output_tokens",
                        "slo_e2e_s", "prefix_ids", "prefix_block_tokens", "session_id", "think_s").iter_rows()
    return [ReplayRequest(idx=i, request_id=rid, arrival_s=float(t), tenant=ten, priority=int(p or 0),
                          input_tokens=int(inp), output_tokens=int(out), est_tokens=int(inp + out),
                          slo_e2e_s=None if slo is None or not math.isfinite(slo) else float(slo),
                          prefix_ids=None if ids is None else tuple(ids), prefix_block_tokens=bt,
                          session_id=sid, think_s=0.0 if think is None or not math.isfinite(think) else float(think))
            for i, (rid, t, ten, p, inp, out, slo, ids, bt, sid, think) in enumerate(rows)]


@dataclass
class ReplayRun:
    """One real replay: per-request frame, whether it was interrupted, and its wall time."""

    frame: pl.DataFrame
    interrupted: bool
    wall_s: float


def replay(trace: pl.DataFrame, *, client: OpenAIClient, model: str, gateway: GatewayConfig,
           microbatch: MicroBatch | None = None, vocab_size: int = 4000, seed: int = 0,
           request_timeout_s: float | None = 600.0, client_config=None) -> ReplayRun:
    """Replay a fitted trace through a real gateway running ``gateway``'s policy
    (``client_config``: timeouts, retries, abandonment, :class:`driftsim.sim.client.ClientConfig`)."""
    reqs = replay_requests(trace)
    gw = ReplayGateway(reqs, policy=make_policy(gateway.policy, **gateway.policy_params),
                       client=StreamingClient(client, model=model, clock=time.perf_counter),
                       max_outstanding=gateway.max_outstanding, microbatch=microbatch, vocab_size=vocab_size,
                       seed=seed, request_timeout_s=request_timeout_s, client_config=client_config)
    t = time.perf_counter()
    records, interrupted = run_replay(gw)
    return ReplayRun(frame=records_frame(records), interrupted=interrupted, wall_s=time.perf_counter() - t)


# ---- through a journal ---------------------------------------------------------------------

def journaled_records(trace: pl.DataFrame, path: Path) -> tuple[dict[int, dict], int]:
    """The finished requests a journal holds for ``trace`` (``{}`` when there is no journal)."""
    if not path.exists():
        return {}, 0
    return read_journal(path, trace=trace_key(trace["request_id"]))


def replay_journaled(trace: pl.DataFrame, path: Path, *, resume: bool, client, model: str, gateway,
                     microbatch=None, vocab_size: int = 4000, seed: int = 0,
                     request_timeout_s: float | None = 600.0, client_config=None):
    """:func:`replay` with every finished request appended to the journal ``path``;
    with ``resume``, only the requests the journal lacks are replayed (see the module docstring)."""
    rows: dict[int, dict] = {}
    if path.exists() and path.stat().st_size:
        if not resume:
            raise JournalError(f"{path} exists: pass --resume to continue that validation, or choose another --out")
        rows, _ = journaled_records(trace, path)
    kept = {i: record_from_row(r) for i, r in rows.items() if r["status"] in KEEP_ON_RESUME}
    reqs = replay_requests(trace)
    todo = [r for r in reqs if r.idx not in kept]
    key = trace_key(trace["request_id"])
    if not todo:
        return ReplayRun(frame=records_frame([kept[i] for i in range(len(reqs))]), interrupted=False, wall_s=0.0)
    shift = todo[0].arrival_s
    sub = [replace(r, idx=k, arrival_s=r.arrival_s - shift) for k, r in enumerate(todo)]
    original = [r.idx for r in todo]
    previous = {j: i for i, j in next_turns(reqs).items()}  # row -> row of its session's previous turn
    settled_before = {k: settle_time(kept[previous[r.idx]]) - shift for k, r in enumerate(todo)
                      if previous.get(r.idx) in kept}
    with ReplayJournal(path, trace=key, requests=len(reqs), time_shift_s=shift) as journal:
        gw = ReplayGateway(sub, policy=make_policy(gateway.policy, **gateway.policy_params),
                           client=StreamingClient(client, model=model, clock=time.perf_counter),
                           max_outstanding=gateway.max_outstanding, microbatch=microbatch, vocab_size=vocab_size,
                           seed=seed, request_timeout_s=request_timeout_s, client_config=client_config,
                           on_record=lambda rec: journal.record(replace(rec, idx=original[rec.idx])),
                           settled_before=settled_before)
        t = time.perf_counter()
        records, interrupted = run_replay(gw)
        wall = time.perf_counter() - t
    merged: dict[int, RequestRecord] = dict(kept)
    for rec in records:
        merged[original[rec.idx]] = _shifted(replace(rec, idx=original[rec.idx]), shift)
    frame = records_frame([merged[i] for i in range(len(reqs))])
    return ReplayRun(frame=frame, interrupted=interrupted, wall_s=wall)


def settle_time(rec: RequestRecord) -> float:
    """When a journaled request settled: its ``settled_s``, or for a journal written before that field,
    its delivery if it completed, else the latest time it has (a timeout or abandonment settled later
    than its last recorded time, by at most the client's limit)."""
    if math.isfinite(rec.settled_s):
        return rec.settled_s
    if rec.status == STATUS_OK and math.isfinite(rec.delivered_s):
        return rec.delivered_s
    times = [t for t in (rec.intended_s, rec.released_s, rec.sent_s, rec.first_token_s, rec.finish_s,
                         rec.delivered_s) if math.isfinite(t)]
    return max(times, default=0.0)


def _shifted(rec: RequestRecord, dt: float) -> RequestRecord:
    if not dt:
        return rec
    return replace(rec, intended_s=rec.intended_s + dt, released_s=rec.released_s + dt, sent_s=rec.sent_s + dt,
                   first_token_s=rec.first_token_s + dt, finish_s=rec.finish_s + dt,
                   delivered_s=rec.delivered_s + dt, settled_s=rec.settled_s + dt,
                   token_times=[t + dt for t in rec.token_times])


def journal_frame(trace: pl.DataFrame, path: Path) -> pl.DataFrame:
    """One replay's per-request frame from its journal alone; requests it lacks are ``not_sent``."""
    rows, dropped = journaled_records(trace, path)
    recs = []
    for r in replay_requests(trace):
        if r.idx in rows:
            recs.append(record_from_row(rows[r.idx]))
        else:
            recs.append(RequestRecord(idx=r.idx, request_id=r.request_id, tenant=r.tenant, input_tokens=r.input_tokens,
                                      output_tokens=r.output_tokens, intended_s=r.arrival_s, status=STATUS_NOT_SENT,
                                      error="not in the journal: the replay stopped before this request finished"))
    return records_frame(recs)

"""A real gateway in front of a real engine, running driftsim's own policy objects.

This is the real-world twin of :class:`driftsim.sim.gateway.Gateway`: the same
:mod:`driftsim.sim.policies` objects order the waiting requests, the same admission
rule releases them (no cap, a cap on requests in flight, or DriftSched's
micro-batch worker), but the requests go to an OpenAI-compatible server over
HTTP and every token's arrival is timed.

::

    trace --(release at arrival_s)--> policy.push --> dispatch --> POST /v1/completions (stream)
                                          ^                              |  token, token, ... [DONE]
                                          +--- policy.on_finish <--------+

Admission, mirroring the simulator exactly:

- no cap (``max_outstanding=None``): every released request is popped and
  sent at once (a client talking straight to vLLM; the policy never holds
  anything);
- a cap: at most ``max_outstanding`` requests in flight; the policy picks the
  next one whenever a slot frees (:meth:`driftsim.sim.gateway.Gateway._dispatch`);
- micro-batch (``MicroBatch``): DriftSched's worker
  (:class:`driftsim.sim.replica.MicroBatchWorker`): take up to ``batch_size`` requests
  in policy order, stop early once ``batch_wait_s`` has passed since the first
  pick and the queue is empty (re-checked every ``batch_poll_s``), send the
  batch, wait for all of it. Every request of a batch is *delivered* when the
  batch completes (``delivered_s``), as DriftSched's blocking ``generate()``.

Every request records (seconds since the replay started, ``perf_counter``):
``released_s`` (entered the gateway), ``sent_s`` (HTTP request started),
``token_times`` (when each output token reached the client), ``finish_s``
(the last token), ``delivered_s``, and ``error`` if anything went wrong.
Output lengths are pinned (``ignore_eos``, ``min_tokens = max_tokens``) and
prompts are token-id lists, so the engine does exactly the work the trace says;
requests with prefix identity share exactly the prefixes the trace names
(:mod:`driftsim.profiling.prompts`), so the engine's prefix cache finds them.
Multi-turn sessions run closed-loop, as :mod:`driftsim.sim.sessions`: a turn
after the first is released ``think_s`` after its predecessor settled (its
last token, or when it failed), and not before its own ``arrival_s``; a turn
whose predecessor settled before the replay began (a resumed replay,
:func:`driftsim.profiling.trace_replay.replay_journaled`) waits from that
settle time (``settled_before``), not from the replay's start.

Robustness: a server error or a dropped stream is recorded on that request
(status ``error``, with the message) and the replay goes on; the client's
timeouts, retries and abandonment follow :class:`driftsim.sim.client.ClientConfig`,
exactly as the simulator models them (a request past its timeout is taken
out of the policy or its stream is closed, so the server aborts it; status
``timeout``/``abandoned``; ``attempts`` counts retries); three refused
connections in a row mean the server is gone: the replay stops and every
request not yet sent is recorded as ``error`` with that reason. Cancelling
the replay (Ctrl-C) keeps everything measured so far (requests in flight
become ``cancelled`` with the tokens they had); an unreachable endpoint fails
before anything is released (:func:`check_endpoint`). ``on_record`` sees
each request once, when its outcome is final (the journal of
:mod:`driftsim.profiling.journal`).

The only code that talks HTTP is :class:`StreamingClient`, a thin layer over
:class:`driftsim.profiling.http.OpenAIClient` (the project's one client seam): unit
tests give it an ``httpx.MockTransport``.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import httpx
import polars as pl

from driftsim.profiling.http import EndpointError, OpenAIClient, StreamChunkError, gc_frozen, sse_chunks
from driftsim.profiling.prompts import prompt_ids, trace_prompt_ids  # noqa: F401  (prompt_ids: re-exported)
from driftsim.profiling.secrets import redact
from driftsim.sim.client import ClientConfig
from driftsim.sim.policies import Policy

#: Per-request outcomes.
STATUS_OK = "ok"  # every requested token arrived and the stream ended with [DONE]
STATUS_ERROR = "error"  # HTTP error, timeout, dropped or short stream: see ``error``
STATUS_CANCELLED = "cancelled"  # in flight when the replay was cancelled (Ctrl-C)
STATUS_NOT_SENT = "not_sent"  # released or not yet due when the replay stopped
STATUS_SKIPPED = "skipped"  # never sent: does not fit the server (reason in ``error``)
STATUS_TIMEOUT = "timeout"  # every attempt ran past the client's timeout (driftsim.sim.client.ClientConfig)
STATUS_ABANDONED = "abandoned"  # the user left before a first token (driftsim.sim.client.ClientConfig)
STATUS_BACKOFF = "backoff"  # between a failed attempt and its retry (never a final status)
FINAL_STATUSES = (STATUS_OK, STATUS_ERROR, STATUS_CANCELLED, STATUS_SKIPPED, STATUS_TIMEOUT, STATUS_ABANDONED)


@dataclass(eq=False)
class ReplayRequest:
    """One request as the gateway's policy sees it (the :class:`driftsim.sim.policies.Queued` fields).

    ``arrival_s`` is set to the *actual* release time when the request enters
    the gateway, so the policy orders by what really happened, and the
    simulator, given the same release times, orders identically.
    """

    idx: int  # row in the replayed trace
    request_id: int
    arrival_s: float  # release time, s since the replay start (intended until released)
    tenant: str
    priority: int  # lower is more urgent
    input_tokens: int  # prompt length, tokens
    output_tokens: int  # pinned output length, tokens
    est_tokens: int  # estimated total budget, tokens (oracle: input + output)
    slo_e2e_s: float | None = None
    generated: int = 0  # tokens received so far
    prefix_ids: tuple[int, ...] | None = None  # the trace's prefix identity (driftsim.profiling.prompts)
    prefix_block_tokens: int | None = None  # tokens each prefix id covers
    session_id: int | None = None  # multi-turn session: sent think_s after the previous turn's completion
    think_s: float = 0.0  # pause after the previous turn of its session completes, s


@dataclass(eq=False)
class RequestRecord:
    """What the client saw of one request (times in s since the replay started; NaN = never)."""

    idx: int
    request_id: int
    tenant: str
    input_tokens: int
    output_tokens: int  # requested (pinned) output tokens
    intended_s: float  # release time the trace asked for
    released_s: float = math.nan  # when the gateway actually took it in
    sent_s: float = math.nan  # when its HTTP request started
    first_token_s: float = math.nan
    finish_s: float = math.nan  # last token received (or [DONE] for a request with no token)
    delivered_s: float = math.nan  # micro-batch: when its batch completed; else = finish_s
    token_times: list[float] = field(default_factory=list)  # arrival of token k+1 at index k
    prompt_tokens: int | None = None  # as the server counted them
    completion_tokens: int = 0  # as the server counted them (or chunks seen, without usage)
    status: str = STATUS_NOT_SENT
    error: str | None = None
    http_status: int | None = None
    batch: int = -1  # micro-batch number, -1 otherwise
    attempts: int = 1  # > 1 after client retries (driftsim.sim.client.ClientConfig)
    settled_s: float = math.nan  # when its outcome became final: its session's next turn waits from here

    @property
    def done(self) -> bool:
        return self.status in FINAL_STATUSES


class RequestFailed(Exception):
    """A request failed; the message says how (the record keeps its tokens; API keys masked)."""

    def __init__(self, message: str = "", *, unreachable: bool = False) -> None:
        super().__init__(redact(message))
        self.unreachable = unreachable  # the connection was refused: the server may be gone


# ---- the client seam -------------------------------------------------------------

class StreamingClient:
    """Streams completions and timestamps each token into a :class:`RequestRecord`.

    Built on :class:`driftsim.profiling.http.OpenAIClient` (payload, base URL, httpx
    transport); it differs from ``OpenAIClient.stream`` in writing into the
    record *as tokens arrive*, so a cancelled or failed request keeps what
    it had. Tokens are counted by ``usage.completion_tokens`` (vLLM's
    ``continuous_usage_stats``) or, on servers without it, one per chunk
    that carries a choice. A chunk that brings several tokens gives each the
    chunk's arrival time.
    """

    def __init__(self, client: OpenAIClient, *, model: str, clock: Callable[[], float]) -> None:
        self.client = client
        self.model = model
        self.clock = clock

    def async_client(self, connections: int) -> httpx.AsyncClient:
        return self.client.async_client(connections)

    async def stream(self, ac: httpx.AsyncClient, prompt_ids: list[int], max_tokens: int,
                     rec: RequestRecord) -> None:
        """Stream one completion into ``rec``; raise :class:`RequestFailed` on any failure."""
        payload = self.client.completions_payload(self.model, prompt_ids, max_tokens)
        url = f"{self.client.base_url}/v1/completions"
        count = 0
        done = False
        rec.sent_s = self.clock()
        try:
            async with ac.stream("POST", url, json=payload) as resp:
                rec.http_status = resp.status_code
                if resp.status_code >= 400:
                    body = (await resp.aread()).decode(errors="replace")[:300]
                    raise RequestFailed(f"HTTP {resp.status_code}: {body}")
                async for now, chunk in sse_chunks(resp, self.clock):
                    if chunk is None:
                        done = True
                        break
                    usage = chunk.get("usage") or {}
                    if usage.get("prompt_tokens") is not None:
                        rec.prompt_tokens = int(usage["prompt_tokens"])
                    if "completion_tokens" in usage and usage["completion_tokens"] is not None:
                        new = int(usage["completion_tokens"])
                    elif chunk.get("choices"):
                        new = count + 1
                    else:
                        new = count
                    if new > count:
                        rec.token_times.extend([now] * (new - count))
                        if count == 0:
                            rec.first_token_s = now
                        rec.finish_s = now
                        count = new
                        rec.completion_tokens = count
        except StreamChunkError as exc:
            raise RequestFailed(str(exc)) from None
        except httpx.TimeoutException as exc:
            raise RequestFailed(f"timed out after {count} of {max_tokens} tokens ({exc.__class__.__name__})") from None
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
            raise RequestFailed(f"connection dropped after {count} of {max_tokens} tokens ({exc.__class__.__name__}: {exc})") from None
        except httpx.ConnectError as exc:
            raise RequestFailed(f"cannot connect: {exc}", unreachable=True) from None
        except httpx.HTTPError as exc:
            raise RequestFailed(f"{exc.__class__.__name__}: {exc}") from None
        if max_tokens == 0 and done:
            rec.finish_s = self.clock()
        if not done:
            raise RequestFailed(f"stream ended after {count} of {max_tokens} tokens without [DONE]")
        if count < max_tokens:
            raise RequestFailed(f"stream ended after {count} of {max_tokens} tokens")


def check_endpoint(client: OpenAIClient, model: str | None = None) -> str:
    """Fail fast: raise :class:`EndpointError` (a clear message) unless the
    endpoint answers and serves ``model``; return the served model name."""
    client.health()
    models = client.models()
    if not models:
        raise EndpointError(f"{client.base_url}/v1/models lists no model")
    names = [str(m.get("id")) for m in models]
    if model is None:
        return names[0]
    if model not in names:
        raise EndpointError(f"model {model!r} is not served at {client.base_url}; it serves {', '.join(names)}")
    return model


# ---- admission -------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class MicroBatch:
    """DriftSched's worker settings (as :class:`driftsim.sim.config.EngineConfig`)."""

    batch_size: int = 32
    batch_wait_s: float = 0.01
    batch_poll_s: float = 0.005

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.batch_wait_s < 0 or self.batch_poll_s <= 0:
            raise ValueError("MicroBatch: batch_size >= 1, batch_wait_s >= 0 and batch_poll_s > 0 required")


def next_turns(requests: list[ReplayRequest]) -> dict[int, int]:
    """Row of each session turn -> row of the same session's next turn (turns of a session come in row order)."""
    out: dict[int, int] = {}
    last: dict[int, int] = {}
    for i, r in enumerate(requests):
        if r.session_id is None:
            continue
        if r.session_id in last:
            out[last[r.session_id]] = i
        last[r.session_id] = i
    return out


class ReplayGateway:
    """Releases requests at their arrival times into a policy and sends them to the engine.

    ``requests`` must be in arrival order. ``records`` (same order) fill in as
    the replay runs and stay valid after a cancellation. Call :meth:`run`
    inside an event loop.
    """

    def __init__(
        self,
        requests: list[ReplayRequest],
        *,
        policy: Policy,
        client: StreamingClient,
        max_outstanding: int | None = None,
        microbatch: MicroBatch | None = None,
        vocab_size: int = 4000,
        seed: int = 0,
        request_timeout_s: float | None = 600.0,
        skip: dict[int, str] | None = None,
        client_config: ClientConfig | None = None,
        on_record: Callable[[RequestRecord], None] | None = None,
        stop_after_unreachable: int | None = 3,
        settled_before: dict[int, float] | None = None,
    ) -> None:
        if max_outstanding is not None and max_outstanding < 1:
            raise ValueError(f"max_outstanding must be >= 1, got {max_outstanding}")
        if max_outstanding is not None and microbatch is not None:
            raise ValueError("give max_outstanding or microbatch, not both")
        self.requests = requests
        self.policy = policy
        self.client = client
        self.cap = max_outstanding
        self.microbatch = microbatch
        self.vocab_size = vocab_size
        self.seed = seed
        self.request_timeout_s = request_timeout_s
        #: timeouts, retries, abandonment: the simulator's semantics (driftsim.sim.client)
        self.cfg = client_config if client_config is not None else ClientConfig(timeout_s=request_timeout_s)
        self.on_record = on_record  # called once per request when it reaches a final status (journal)
        self._task_of: dict[int, asyncio.Task] = {}
        self._giving_up: dict[int, tuple[str, str]] = {}  # idx -> (status, reason) of a timer's cancel
        self._saw_token: set[int] = set()
        #: this many connection refusals in a row (no success between) = the server is gone: stop
        self.stop_after_unreachable = stop_after_unreachable
        self._refused = 0
        self.stopped: str | None = None  # why the replay stopped early (the server is gone)
        self.records = [
            RequestRecord(idx=r.idx, request_id=r.request_id, tenant=r.tenant, input_tokens=r.input_tokens,
                          output_tokens=r.output_tokens, intended_s=r.arrival_s)
            for r in requests
        ]
        for i, why in (skip or {}).items():
            self.records[i].status = STATUS_SKIPPED
            self.records[i].error = why
        self.inflight = 0
        self.batches = 0
        self._tasks: set[asyncio.Task] = set()
        self._work = asyncio.Event()
        self._ac: httpx.AsyncClient | None = None
        self.t0 = math.nan
        self._next_turn = next_turns(requests)  # row -> row of its session's next turn
        #: turns whose previous turn settled before this replay began (a resumed replay: the previous
        #: turn is in the journal), row -> that settle time on this replay's clock (may be negative)
        self._settled_before = dict(settled_before or {})
        #: turns released by their predecessor, not the clock
        self._held = set(self._next_turn.values()) | set(self._settled_before)

    # ---- the clock: seconds since the replay started
    def now(self) -> float:
        return time.perf_counter() - self.t0

    async def run(self) -> list[RequestRecord]:
        """Replay every request; return the records. On cancellation, requests in
        flight are cancelled and marked, and the cancellation propagates.

        The objects alive at the start stay out of the garbage collector for
        the replay (:func:`driftsim.profiling.http.gc_frozen`)."""
        with gc_frozen():
            return await self._run()

    async def _run(self) -> list[RequestRecord]:
        self.t0 = time.perf_counter()
        self.client.clock = self.now
        n_conn = self.cap or (self.microbatch.batch_size if self.microbatch else max(1, len(self.requests)))
        worker = None
        async with self.client.async_client(min(n_conn, 1000)) as ac:
            self._ac = ac
            try:
                if self.microbatch is not None:
                    worker = asyncio.create_task(self._microbatch_worker())
                for rec in self.records:
                    if rec.status == STATUS_SKIPPED:
                        self._final(rec)
                for j, settled in self._settled_before.items():
                    self._schedule_turn(j, settled)
                for i, req in enumerate(self.requests):
                    if self.records[i].status == STATUS_SKIPPED or i in self._held:
                        continue
                    delay = req.arrival_s - self.now()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    if self.stopped:
                        break
                    self._release(i, req)
                while not self._settled():
                    if self.stopped:
                        self._fail_unsent()
                    await asyncio.sleep(0.01)
                    if worker is not None and worker.done():
                        worker.result()  # surface a crashed worker
            except BaseException:
                await self._cancel_all(worker)
                raise
            if worker is not None:
                worker.cancel()
                await asyncio.gather(worker, return_exceptions=True)
        return self.records

    def _settled(self) -> bool:
        """Every request has its final status and, behind the micro-batch worker, every completed
        one has been handed back with its batch (delivered and journaled): the worker does that after
        the batch's last stream ends, so a final status alone would let the replay stop first."""
        return all(r.done and (self.microbatch is None or r.status != STATUS_OK or not math.isnan(r.delivered_s))
                   for r in self.records)

    async def _cancel_all(self, worker: asyncio.Task | None) -> None:
        tasks = list(self._tasks) + ([worker] if worker is not None else [])
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.mark_unfinished("cancelled")

    def mark_unfinished(self, how: str) -> None:
        """Give every request the replay did not finish a final status saying where it was when the
        replay was ``how`` (cancelled, interrupted): mid-stream, queued, or waiting to retry."""
        for rec in self.records:
            if rec.status == "sending":
                rec.status = STATUS_CANCELLED
                rec.error = f"cancelled after {rec.completion_tokens} of {rec.output_tokens} tokens"
            elif rec.status == "queued":
                rec.status = STATUS_NOT_SENT
                rec.error = f"waiting in the gateway when the replay was {how}"
            elif rec.status == STATUS_BACKOFF:
                rec.status = STATUS_NOT_SENT
                rec.error = f"{rec.error}; waiting to retry when the replay was {how}"

    # ---- release and dispatch (mirrors driftsim.sim.gateway.Gateway)
    def _release(self, i: int, req: ReplayRequest) -> None:
        now = self.now()
        req.arrival_s = now
        rec = self.records[i]
        loop = asyncio.get_running_loop()
        if math.isnan(rec.released_s):  # first attempt: the user's clock starts
            rec.released_s = now
            after = self.cfg.abandon_after(req.tenant)
            if after is not None:
                loop.call_later(after, self._abandon, req, after)
        if self.cfg.timeout_s is not None:
            loop.call_later(self.cfg.timeout_s, self._expire, req, rec.attempts)
        rec.status = "queued"
        self.policy.push(req, now)
        if self.microbatch is None:
            self._dispatch(now)
        else:
            self._work.set()

    def _dispatch(self, now: float) -> None:
        while len(self.policy) and (self.cap is None or self.inflight < self.cap):
            req = self.policy.pop(now)
            self._start(req)

    def _start(self, req: ReplayRequest, batch: int = -1) -> asyncio.Task:
        self.inflight += 1
        rec = self.records[req.idx]
        rec.status = "sending"
        rec.batch = batch
        task = asyncio.create_task(self._send(req))
        self._task_of[req.idx] = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ---- the client giving up (driftsim.sim.client semantics)
    def _give_up(self, req: ReplayRequest, status: str, reason: str) -> None:
        """Withdraw the attempt under way: out of the policy if waiting, else cancel its stream
        (the server aborts a request whose client disconnects); the slot frees at once."""
        rec = self.records[req.idx]
        if rec.status == "queued":
            if not self.policy.remove(req):
                raise RuntimeError(f"request {req.request_id} is queued but not in the policy")
            self._failed(req, status, reason)
        elif rec.status == "sending":
            self._giving_up[req.idx] = (status, reason)
            self._task_of[req.idx].cancel()

    def _expire(self, req: ReplayRequest, attempt: int) -> None:
        rec = self.records[req.idx]
        if rec.attempts != attempt or rec.status not in ("queued", "sending"):
            return
        self._give_up(req, STATUS_TIMEOUT, self.cfg.timeout_reason(attempt, rec.completion_tokens, req.output_tokens))

    def _abandon(self, req: ReplayRequest, after: float) -> None:
        rec = self.records[req.idx]
        if rec.done or rec.completion_tokens or req.idx in self._saw_token:
            return
        reason = self.cfg.abandon_reason(after, rec.attempts)
        if rec.status == STATUS_BACKOFF:
            self._failed(req, STATUS_ABANDONED, reason)
        else:
            self._give_up(req, STATUS_ABANDONED, reason)

    def _failed(self, req: ReplayRequest, status: str, reason: str) -> None:
        """An attempt failed: retry it after the backoff if the client still may, else final."""
        rec = self.records[req.idx]
        if rec.completion_tokens:
            self._saw_token.add(req.idx)
        k = rec.attempts
        note = redact(reason if not self.cfg.retries else f"attempt {k}: {reason}")
        rec.error = note if not rec.error else f"{rec.error}; {note}"
        if status != STATUS_ABANDONED and k <= self.cfg.retries and not self.stopped:
            rec.status = STATUS_BACKOFF
            asyncio.get_running_loop().call_later(self.cfg.backoff(k), self._retry, req)
            return
        rec.status = status
        self._final(rec)

    def _retry(self, req: ReplayRequest) -> None:
        rec = self.records[req.idx]
        if rec.status != STATUS_BACKOFF:
            return  # the user left meanwhile
        rec.attempts += 1
        rec.sent_s = rec.first_token_s = rec.finish_s = rec.delivered_s = math.nan
        rec.token_times = []
        rec.completion_tokens = 0
        rec.prompt_tokens = rec.http_status = None
        req.generated = 0
        self._release(req.idx, req)

    def _fail_unsent(self) -> None:
        """The server is gone: every request not yet sent fails now, with the reason (none is dropped)."""
        for i, rec in enumerate(self.records):
            if rec.status in ("queued", STATUS_NOT_SENT, STATUS_BACKOFF):
                if rec.status == "queued":
                    self.policy.remove(self.requests[i])
                note = f"not sent: {self.stopped}"
                rec.error = note if not rec.error else f"{rec.error}; {note}"
                rec.status = STATUS_ERROR
                self._final(rec)

    def _final(self, rec: RequestRecord) -> None:
        rec.settled_s = rec.delivered_s if rec.status == STATUS_OK and math.isfinite(rec.delivered_s) else self.now()
        if self.on_record is not None:
            self.on_record(rec)
        j = self._next_turn.get(rec.idx)
        if j is not None:  # a closed loop per session, as driftsim.sim.sessions: think, then send the next turn
            self._schedule_turn(j, rec.settled_s)

    def _schedule_turn(self, j: int, settled: float) -> None:
        """Release the held turn ``j`` ``think_s`` after its previous turn settled at ``settled``, and
        not before its own arrival."""
        at = max(self.records[j].intended_s, settled + self.requests[j].think_s)
        asyncio.get_running_loop().call_later(max(0.0, at - self.now()), self._release_turn, j)

    def _release_turn(self, j: int) -> None:
        """Release the held turn ``j`` (its predecessor settled ``think_s`` ago), unless the replay stopped."""
        if self.stopped or self.records[j].status != STATUS_NOT_SENT:
            return
        self._release(j, self.requests[j])

    async def _send(self, req: ReplayRequest) -> None:
        rec = self.records[req.idx]
        ids = trace_prompt_ids(req.request_id, req.input_tokens, req.prefix_ids, req.prefix_block_tokens,
                               vocab_size=self.vocab_size, seed=self.seed)
        failure: tuple[str, str] | None = None
        try:
            await self.client.stream(self._ac, ids, req.output_tokens, rec)
            rec.status = STATUS_OK
            self._refused = 0
        except RequestFailed as exc:
            failure = (STATUS_ERROR, str(exc))
            self._refused = self._refused + 1 if exc.unreachable else 0
            if self.stop_after_unreachable and self._refused >= self.stop_after_unreachable and not self.stopped:
                self.stopped = (f"the server stopped answering ({self._refused} connections refused in a row, "
                                f"the last: {exc})")
        except asyncio.CancelledError:
            failure = self._giving_up.pop(req.idx, None)
            if failure is None:  # the replay is being cancelled
                rec.status = STATUS_CANCELLED
                rec.error = f"cancelled after {rec.completion_tokens} of {req.output_tokens} tokens"
                raise
        except Exception as exc:  # a bug or an unexpected transport failure: record it, keep replaying
            failure = (STATUS_ERROR, f"{exc.__class__.__name__}: {exc}")
        finally:
            req.generated = rec.completion_tokens
            self.inflight -= 1
        if failure is not None:
            self._failed(req, *failure)
        if math.isnan(rec.delivered_s) and self.microbatch is None:
            rec.delivered_s = rec.finish_s
        if rec.status == STATUS_OK and self.microbatch is None:
            self._final(rec)
        if self.microbatch is None:
            now = self.now()
            self.policy.on_finish(req, now, output_tokens=req.generated)
            if self.cap is not None:
                self._dispatch(now)

    # ---- DriftSched's micro-batch worker (mirrors driftsim.sim.replica.MicroBatchWorker)
    async def _microbatch_worker(self) -> None:
        mb = self.microbatch
        policy = self.policy
        while True:
            while not len(policy):
                self._work.clear()
                await self._work.wait()
            first_pick = self.now()
            batch = [policy.pop(first_pick)]
            while len(batch) < mb.batch_size:
                if len(policy):
                    batch.append(policy.pop(self.now()))
                elif self.now() - first_pick >= mb.batch_wait_s:
                    break
                else:
                    await asyncio.sleep(mb.batch_poll_s)
            number = self.batches
            self.batches += 1
            tasks = [self._start(req, number) for req in batch]
            await asyncio.gather(*tasks, return_exceptions=True)
            end = self.now()
            for req in batch:
                self.records[req.idx].delivered_s = end
                if self.records[req.idx].status == STATUS_OK:
                    self._final(self.records[req.idx])
            for req in batch:
                policy.on_finish(req, end, output_tokens=req.generated)


def run_replay(gateway: ReplayGateway) -> tuple[list[RequestRecord], bool]:
    """Run a gateway to the end in a fresh event loop; ``(records, interrupted)``.

    Ctrl-C (KeyboardInterrupt) stops the replay and returns what was
    measured so far with ``interrupted=True``.
    """
    try:
        asyncio.run(gateway.run())
        return gateway.records, False
    except KeyboardInterrupt:
        gateway.mark_unfinished("interrupted")  # asyncio.run cancelled the tasks; mark any the loop never reached
        return gateway.records, True


def records_frame(records: list[RequestRecord]) -> pl.DataFrame:
    """The records as one polars DataFrame (one row per request, token times as a list column).

    Latencies are measured from ``released_s`` (when the request entered the
    gateway): ``queue_wait_s = sent - released``, ``ttft_s = first token -
    released``, ``e2e_s = delivered - released``, ``tpot_s = (last token -
    first token) / (tokens - 1)``; null unless the request completed.
    """
    rows: dict[str, list[Any]] = {k: [] for k in (
        "request_id", "tenant", "input_tokens", "output_tokens", "intended_s", "released_s", "sent_s",
        "first_token_s", "finish_s", "delivered_s", "completion_tokens", "prompt_tokens", "status", "error",
        "http_status", "batch", "attempts", "token_times")}
    for r in records:
        for k in rows:
            rows[k].append(getattr(r, k))
    df = pl.DataFrame(rows, schema={
        "request_id": pl.Int64, "tenant": pl.String, "input_tokens": pl.Int64, "output_tokens": pl.Int64,
        "intended_s": pl.Float64, "released_s": pl.Float64, "sent_s": pl.Float64, "first_token_s": pl.Float64,
        "finish_s": pl.Float64, "delivered_s": pl.Float64, "completion_tokens": pl.Int64,
        "prompt_tokens": pl.Int64, "status": pl.String, "error": pl.String, "http_status": pl.Int64,
        "batch": pl.Int64, "attempts": pl.Int64, "token_times": pl.List(pl.Float64)}, strict=False)
    ok = pl.col("status") == STATUS_OK
    return df.with_columns(
        pl.when(ok).then(pl.col("sent_s") - pl.col("released_s")).alias("queue_wait_s"),
        pl.when(ok).then(pl.col("first_token_s") - pl.col("released_s")).alias("ttft_s"),
        pl.when(ok).then(pl.col("delivered_s") - pl.col("released_s")).alias("e2e_s"),
        pl.when(ok & (pl.col("completion_tokens") > 1))
        .then((pl.col("finish_s") - pl.col("first_token_s")) / (pl.col("completion_tokens") - 1))
        .alias("tpot_s"),
    )

"""A real gateway in front of a real engine, running driftsim's own policy objects.

This is the real-world twin of :class:`sim.gateway.Gateway`: the same
:mod:`sim.policies` objects order the waiting requests, the same admission
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
  next one whenever a slot frees (:meth:`sim.gateway.Gateway._dispatch`);
- micro-batch (``MicroBatch``): DriftSched's worker
  (:class:`sim.replica.MicroBatchWorker`): take up to ``batch_size`` requests
  in policy order, stop early once ``batch_wait_s`` has passed since the first
  pick and the queue is empty (re-checked every ``batch_poll_s``), send the
  batch, wait for all of it. Every request of a batch is *delivered* when the
  batch completes (``delivered_s``), as DriftSched's blocking ``generate()``.

Every request records (seconds since the replay started, ``perf_counter``):
``released_s`` (entered the gateway), ``sent_s`` (HTTP request started),
``token_times`` (when each output token reached the client), ``finish_s``
(the last token), ``delivered_s``, and ``error`` if anything went wrong.
Output lengths are pinned (``ignore_eos``, ``min_tokens = max_tokens``) and
prompts are token-id lists, so the engine does exactly the work the trace says.

Robustness: a server error, a timeout or a dropped stream is recorded on that
request (status ``error``, with the message) and the replay goes on;
cancelling the replay (Ctrl-C) keeps everything measured so far (requests in
flight become ``cancelled`` with the tokens they had); an unreachable endpoint
fails before anything is released (:func:`check_endpoint`).

The only code that talks HTTP is :class:`StreamingClient`, a thin layer over
:class:`profiling.http.OpenAIClient` (the project's one client seam): unit
tests give it an ``httpx.MockTransport``.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import httpx
import numpy as np

from profiling.http import EndpointError, OpenAIClient
from sim.policies import Policy

#: Per-request outcomes.
STATUS_OK = "ok"  # every requested token arrived and the stream ended with [DONE]
STATUS_ERROR = "error"  # HTTP error, timeout, dropped or short stream: see ``error``
STATUS_CANCELLED = "cancelled"  # in flight when the replay was cancelled (Ctrl-C)
STATUS_NOT_SENT = "not_sent"  # released or not yet due when the replay stopped
STATUS_SKIPPED = "skipped"  # never sent: does not fit the server (reason in ``error``)


@dataclass(eq=False)
class ReplayRequest:
    """One request as the gateway's policy sees it (the :class:`sim.policies.Queued` fields).

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

    @property
    def done(self) -> bool:
        return self.status in (STATUS_OK, STATUS_ERROR, STATUS_CANCELLED, STATUS_SKIPPED)


class RequestFailed(Exception):
    """A request failed; the message says how (the record keeps its tokens)."""


# ---- the client seam -------------------------------------------------------------

class StreamingClient:
    """Streams completions and timestamps each token into a :class:`RequestRecord`.

    Built on :class:`profiling.http.OpenAIClient` (payload, base URL, httpx
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
                async for line in resp.aiter_lines():
                    now = self.clock()
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        done = True
                        break
                    try:
                        chunk = json.loads(data)
                    except json.JSONDecodeError:
                        raise RequestFailed(f"stream sent a chunk that is not JSON: {data[:200]}") from None
                    if "error" in chunk:
                        raise RequestFailed(f"server reported an error mid-stream: {chunk['error']}")
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
        except httpx.TimeoutException as exc:
            raise RequestFailed(f"timed out after {count} of {max_tokens} tokens ({exc.__class__.__name__})") from None
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
            raise RequestFailed(f"connection dropped after {count} of {max_tokens} tokens ({exc.__class__.__name__}: {exc})") from None
        except httpx.ConnectError as exc:
            raise RequestFailed(f"cannot connect: {exc}") from None
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
    """DriftSched's worker settings (as :class:`sim.config.EngineConfig`)."""

    batch_size: int = 32
    batch_wait_s: float = 0.01
    batch_poll_s: float = 0.005

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.batch_wait_s < 0 or self.batch_poll_s <= 0:
            raise ValueError("MicroBatch: batch_size >= 1, batch_wait_s >= 0 and batch_poll_s > 0 required")


def prompt_ids(request_id: int, n: int, *, vocab_size: int, seed: int) -> list[int]:
    """A deterministic random token-id prompt of exactly ``n`` tokens (ids in [100, vocab_size)).

    Random ids per request keep prefix caching from sharing blocks between requests.
    """
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(int(request_id) & 0x7FFFFFFF,)))
    return rng.integers(100, max(101, vocab_size), size=n).tolist()


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

    # ---- the clock: seconds since the replay started
    def now(self) -> float:
        return time.perf_counter() - self.t0

    async def run(self) -> list[RequestRecord]:
        """Replay every request; return the records. On cancellation, requests in
        flight are cancelled and marked, and the cancellation propagates."""
        self.t0 = time.perf_counter()
        self.client.clock = self.now
        n_conn = self.cap or (self.microbatch.batch_size if self.microbatch else max(1, len(self.requests)))
        worker = None
        async with self.client.async_client(min(n_conn, 1000)) as ac:
            self._ac = ac
            try:
                if self.microbatch is not None:
                    worker = asyncio.create_task(self._microbatch_worker())
                for i, req in enumerate(self.requests):
                    if self.records[i].status == STATUS_SKIPPED:
                        continue
                    delay = req.arrival_s - self.now()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    self._release(i, req)
                while not all(r.done for r in self.records):
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

    async def _cancel_all(self, worker: asyncio.Task | None) -> None:
        tasks = list(self._tasks) + ([worker] if worker is not None else [])
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for rec in self.records:
            if rec.status == "sending":
                rec.status = STATUS_CANCELLED
                rec.error = f"cancelled after {rec.completion_tokens} of {rec.output_tokens} tokens"
            elif rec.status == "queued":
                rec.status = STATUS_NOT_SENT
                rec.error = "waiting in the gateway when the replay was cancelled"

    # ---- release and dispatch (mirrors sim.gateway.Gateway)
    def _release(self, i: int, req: ReplayRequest) -> None:
        now = self.now()
        req.arrival_s = now
        rec = self.records[i]
        rec.released_s = now
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
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _send(self, req: ReplayRequest) -> None:
        rec = self.records[req.idx]
        ids = prompt_ids(req.request_id, req.input_tokens, vocab_size=self.vocab_size, seed=self.seed)
        try:
            if self.request_timeout_s is None:
                await self.client.stream(self._ac, ids, req.output_tokens, rec)
            else:
                await asyncio.wait_for(self.client.stream(self._ac, ids, req.output_tokens, rec),
                                       self.request_timeout_s)
            rec.status = STATUS_OK
        except RequestFailed as exc:
            rec.status, rec.error = STATUS_ERROR, str(exc)
        except asyncio.TimeoutError:
            rec.status = STATUS_ERROR
            rec.error = f"no completion within {self.request_timeout_s:g} s ({rec.completion_tokens} of {req.output_tokens} tokens)"
        except asyncio.CancelledError:
            rec.status = STATUS_CANCELLED
            rec.error = f"cancelled after {rec.completion_tokens} of {req.output_tokens} tokens"
            raise
        except Exception as exc:  # a bug or an unexpected transport failure: record it, keep replaying
            rec.status, rec.error = STATUS_ERROR, f"{exc.__class__.__name__}: {exc}"
        finally:
            req.generated = rec.completion_tokens
            self.inflight -= 1
        if math.isnan(rec.delivered_s) and self.microbatch is None:
            rec.delivered_s = rec.finish_s
        if self.microbatch is None:
            now = self.now()
            self.policy.on_finish(req, now, output_tokens=req.generated)
            if self.cap is not None:
                self._dispatch(now)

    # ---- DriftSched's micro-batch worker (mirrors sim.replica.MicroBatchWorker)
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
        for rec in gateway.records:  # asyncio.run cancelled the tasks; mark any the loop never reached
            if rec.status == "sending":
                rec.status = STATUS_CANCELLED
                rec.error = f"cancelled after {rec.completion_tokens} of {rec.output_tokens} tokens"
            elif rec.status == "queued":
                rec.status = STATUS_NOT_SENT
                rec.error = "waiting in the gateway when the replay was interrupted"
        return gateway.records, True


def records_frame(records: list[RequestRecord]):
    """The records as one polars DataFrame (one row per request, token times as a list column).

    Latencies are measured from ``released_s`` (when the request entered the
    gateway): ``queue_wait_s = sent - released``, ``ttft_s = first token -
    released``, ``e2e_s = delivered - released``, ``tpot_s = (last token -
    first token) / (tokens - 1)``; null unless the request completed.
    """
    import polars as pl

    rows: dict[str, list[Any]] = {k: [] for k in (
        "request_id", "tenant", "input_tokens", "output_tokens", "intended_s", "released_s", "sent_s",
        "first_token_s", "finish_s", "delivered_s", "completion_tokens", "prompt_tokens", "status", "error",
        "http_status", "batch", "token_times")}
    for r in records:
        for k in rows:
            rows[k].append(getattr(r, k))
    df = pl.DataFrame(rows, schema={
        "request_id": pl.Int64, "tenant": pl.String, "input_tokens": pl.Int64, "output_tokens": pl.Int64,
        "intended_s": pl.Float64, "released_s": pl.Float64, "sent_s": pl.Float64, "first_token_s": pl.Float64,
        "finish_s": pl.Float64, "delivered_s": pl.Float64, "completion_tokens": pl.Int64,
        "prompt_tokens": pl.Int64, "status": pl.String, "error": pl.String, "http_status": pl.Int64,
        "batch": pl.Int64, "token_times": pl.List(pl.Float64)}, strict=False)
    ok = pl.col("status") == STATUS_OK
    return df.with_columns(
        pl.when(ok).then(pl.col("sent_s") - pl.col("released_s")).alias("queue_wait_s"),
        pl.when(ok).then(pl.col("first_token_s") - pl.col("released_s")).alias("ttft_s"),
        pl.when(ok).then(pl.col("delivered_s") - pl.col("released_s")).alias("e2e_s"),
        pl.when(ok & (pl.col("completion_tokens") > 1))
        .then((pl.col("finish_s") - pl.col("first_token_s")) / (pl.col("completion_tokens") - 1))
        .alias("tpot_s"),
    )

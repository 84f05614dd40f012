"""Measuring any OpenAI-compatible server over HTTP (vLLM or others).

One narrow client seam, :class:`OpenAIClient`, over httpx: every byte that
crosses the network goes through it, so unit tests swap in
``httpx.MockTransport`` and integration tests point it at a real server on
loopback.

What HTTP can and cannot see. A client sees per-request token arrival
times, not engine steps. Step times are recovered only where the step
boundaries are known, with these precisions:

- **decode steps** (synchronised batch): ``batch`` requests are sent
  together (behind a *gate*, below); once every one of them has its first
  token, each engine step emits exactly one token per request, so the gap
  between consecutive bursts of tokens is one decode step with ``batch``
  sequences whose contexts the client knows. Precision: the jitter of the
  server's streaming path (event loop, serialisation, loopback), typically
  under a millisecond on a GPU host and a few milliseconds on a busy
  two-core CPU host; a burst whose tokens spread over more than a quarter
  of the gap is discarded. When the whole batch is prefilled in one step
  and the server is vLLM, the probe instead yields one row: the mean of
  the engine's own inter-token latencies (``vllm:inter_token_latency_seconds``,
  engine-side timestamps) over its decode steps, at their mean context;
  for a model linear in the context that is exact, and it is free of the
  streaming jitter.
- **mixed steps**: while such a batch decodes, prompts that fit in the
  step's token budget join; the burst that carries their first tokens
  closes a step that ran those prompts beside the decodes. Same precision.
- **prefill steps**: a single prompt on an idle server is timed by the
  engine itself: vLLM's ``vllm:request_prefill_time_seconds`` histogram
  (first-token time minus scheduled time, both engine-side) grows by
  exactly that step's duration, read from ``/metrics`` before and after.
  Several prompts at once are gated and timed as the gap between the
  gate's first token and theirs (client-side precision, as above); so is
  the one prefill step that opens every decode probe whose prompts fit in
  a step, which gives a prefill row per decode probe.
  Prefills longer than one step's token budget are not attributed.

The *gate*: a request with a long prompt and one output token is sent
first; the probe's requests are sent while it computes, so they wait in
the scheduler and start together in the next step (an idle engine would
otherwise start the first arrival alone).

Every probe also reads the engine's step counter
(``vllm:iteration_tokens_total`` count and sum) before and after; a probe
whose engine-side step count or token count disagrees with what the client
attributed, or that saw a preemption, is dropped.

KV capacity: ``/metrics``'s ``vllm:cache_config_info`` gives
``num_gpu_blocks`` and ``block_size`` (and the utilisation they were sized
at), which the profile records so the simulator's KV cache matches the
server's. Servers other than vLLM lack these metrics: capacity and the
engine-side checks are then unavailable (said in the metadata) and only
client-side decode/mixed gaps are used.
"""

from __future__ import annotations

import asyncio
import gc
import json
import math
import platform
import re
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import httpx
import numpy as np

from driftsim.costmodel.batch import chunk_attn_tokens
from driftsim.profiling.measurements import empty_row, phase_of
from driftsim.profiling.plan import EngineLimits, ProbePoint
from driftsim.profiling.secrets import ApiKey, EndpointAuth, as_key, redact


class EndpointError(RuntimeError):
    """The endpoint is unreachable, is not an OpenAI-compatible server, or
    failed a request; the message says which and what it answered (any API
    key in it is masked: a server may echo one back)."""

    def __init__(self, message: str = "") -> None:
        super().__init__(redact(message))


# ---- Prometheus text ---------------------------------------------------------

_LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """``name -> [(labels, value), ...]`` from Prometheus text exposition.
    Comments and unparsable lines are skipped."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _LINE.match(line)
        if not m:
            continue
        labels = {k: bytes(v, "utf-8").decode("unicode_escape") for k, v in _LABEL.findall(m.group(3) or "")}
        try:
            value = float(m.group(4))
        except ValueError:
            continue
        out.setdefault(m.group(1), []).append((labels, value))
    return out


def metric_total(metrics: dict, name: str) -> float | None:
    """Sum of a metric over its label sets (None if absent)."""
    series = metrics.get(name)
    return None if not series else float(sum(v for _, v in series))


def cache_config(metrics: dict) -> dict:
    """KV facts from ``vllm:cache_config_info``: num_gpu_blocks, block_size,
    gpu_memory_utilization, enable_prefix_caching. Raises
    :class:`EndpointError` when the metric is missing or unusable."""
    series = metrics.get("vllm:cache_config_info")
    if not series:
        raise EndpointError("/metrics has no vllm:cache_config_info (not a vLLM server, or a version without it)")
    labels = series[0][0]
    try:
        out = {"num_gpu_blocks": int(labels["num_gpu_blocks"]), "block_size": int(labels["block_size"])}
    except (KeyError, ValueError) as exc:
        raise EndpointError(f"vllm:cache_config_info lacks a usable {exc} label: {labels}") from None
    if "gpu_memory_utilization" in labels:
        try:
            out["gpu_memory_utilization"] = float(labels["gpu_memory_utilization"])
        except ValueError:
            pass
    if "enable_prefix_caching" in labels:
        out["enable_prefix_caching"] = labels["enable_prefix_caching"] == "True"
    return out


# ---- the client seam -----------------------------------------------------------

@dataclass
class StreamResult:
    """One streamed completion as the client saw it."""

    t_sent: float  # perf_counter when the request was sent, s
    arrivals: list[float]  # arrivals[k-1] = perf_counter when token k was reported, s (NaN if never seen alone)
    completion_tokens: int  # tokens the server says it produced
    prompt_tokens: int
    finish_reason: str | None = None



class StreamChunkError(ValueError):
    """A completion stream sent a chunk that is not JSON, or one that reports an error."""


async def sse_chunks(resp: httpx.Response, clock: Callable[[], float]):
    """Yield ``(arrival time, chunk)`` for each ``data:`` event of an OpenAI
    completion stream, timed on arrival; a final ``(time, None)`` marks
    ``[DONE]``. Raises :class:`StreamChunkError` on a chunk that is not JSON
    or carries an error (the callers add where it came from)."""
    async for line in resp.aiter_lines():
        now = clock()
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            yield now, None
            return
        try:
            chunk = json.loads(data)
        except json.JSONDecodeError:
            raise StreamChunkError(f"stream sent a chunk that is not JSON: {data[:200]}") from None
        if "error" in chunk:
            raise StreamChunkError(f"server reported an error mid-stream: {chunk['error']}")
        yield now, chunk

class OpenAIClient:
    """The only code that talks HTTP to an engine.

    ``transport`` (and ``async_transport``) exist for tests
    (``httpx.MockTransport``); by default httpx opens real connections.
    Every failure becomes an :class:`EndpointError` naming the URL. An
    ``api_key`` goes only to this endpoint's origin (:mod:`driftsim.profiling.secrets`).
    """

    def __init__(self, base_url: str, *, api_key: "str | ApiKey | None" = None, timeout_s: float = 600.0,
                 transport: httpx.BaseTransport | None = None,
                 async_transport: httpx.AsyncBaseTransport | None = None) -> None:
        base = base_url.rstrip("/")
        if base.endswith("/v1"):
            base = base[:-3]
        if not re.match(r"^https?://", base):
            raise EndpointError(f"endpoint {base_url!r} is not an http(s) URL (e.g. http://127.0.0.1:8000)")
        self.base_url = base
        key = as_key(api_key)
        self._auth = EndpointAuth(key, base) if key is not None else None
        self._headers: dict[str, str] = {}
        self._timeout = httpx.Timeout(timeout_s, connect=10.0)
        self._transport = transport
        self._async_transport = async_transport if async_transport is not None else transport  # MockTransport is both
        self._client = httpx.Client(base_url=base, headers=self._headers, timeout=self._timeout, transport=transport,
                                    auth=self._auth)

    def close(self) -> None:
        self._client.close()

    # ---- plain requests ----------------------------------------------------
    def _get(self, path: str) -> httpx.Response:
        try:
            resp = self._client.get(path)
        except httpx.ConnectError as exc:
            raise EndpointError(f"cannot reach {self.base_url}{path}: {exc} (is the server running?)") from None
        except httpx.TimeoutException as exc:
            raise EndpointError(f"{self.base_url}{path} timed out: {exc}") from None
        except httpx.HTTPError as exc:
            raise EndpointError(f"{self.base_url}{path} failed: {exc.__class__.__name__}: {exc}") from None
        return resp

    def _get_ok(self, path: str) -> httpx.Response:
        resp = self._get(path)
        if 300 <= resp.status_code < 400:  # not followed: the API key must not travel to another host
            raise EndpointError(f"GET {self.base_url}{path} answered {resp.status_code}, a redirect to "
                                f"{resp.headers.get('location', '?')}, which driftsim does not follow; "
                                "give the final URL as the endpoint")
        if resp.status_code >= 400:
            raise EndpointError(f"GET {self.base_url}{path} answered {resp.status_code}: {resp.text[:300]}")
        return resp

    def health(self) -> None:
        """Raise unless ``/health`` (vLLM) or ``/v1/models`` answers 2xx."""
        resp = self._get("/health")
        if resp.status_code < 400:
            return
        self._get_ok("/v1/models")

    def models(self) -> list[dict]:
        resp = self._get_ok("/v1/models")
        try:
            data = resp.json()["data"]
            assert isinstance(data, list)
        except Exception:
            raise EndpointError(f"{self.base_url}/v1/models is not an OpenAI model list: {resp.text[:300]}") from None
        return data

    def version(self) -> str | None:
        resp = self._get("/version")
        if resp.status_code >= 400:
            return None
        try:
            return str(resp.json().get("version"))
        except Exception:
            return None

    def metrics(self) -> dict:
        """Parsed ``/metrics`` (empty dict if the server has none)."""
        resp = self._get("/metrics")
        if resp.status_code >= 400:
            return {}
        return parse_prometheus(resp.text)

    # ---- streaming --------------------------------------------------------------
    def completions_payload(self, model: str, prompt_ids: list[int], max_tokens: int) -> dict:
        """The request for one probe: token-id prompt (exact length), pinned
        output length (``ignore_eos``, ``min_tokens = max_tokens``), usage on
        every chunk so each chunk says how many tokens exist."""
        return {"model": model, "prompt": prompt_ids, "max_tokens": max_tokens, "min_tokens": max_tokens,
                "ignore_eos": True, "temperature": 0.0, "stream": True,
                "stream_options": {"include_usage": True, "continuous_usage_stats": True}}

    async def stream(self, client: httpx.AsyncClient, model: str, prompt_ids: list[int],
                     max_tokens: int, progress: list[int] | None = None) -> StreamResult:
        """Stream one completion, timing every chunk on arrival. ``progress[0]``,
        if given, is kept equal to the tokens received so far."""
        payload = self.completions_payload(model, prompt_ids, max_tokens)
        arrivals = [math.nan] * max_tokens
        count = prompt = 0
        finish = None
        done = False
        t_sent = time.perf_counter()
        url = f"{self.base_url}/v1/completions"
        try:
            async with client.stream("POST", url, json=payload) as resp:
                if resp.status_code >= 400:
                    body = (await resp.aread()).decode(errors="replace")[:300]
                    raise EndpointError(f"POST {url} answered {resp.status_code}: {body}")
                async for now, chunk in sse_chunks(resp, time.perf_counter):
                    if chunk is None:
                        done = True
                        break
                    usage = chunk.get("usage") or {}
                    if "completion_tokens" not in usage:
                        raise EndpointError(
                            f"POST {url}: chunks carry no usage.completion_tokens; the server must support "
                            "stream_options.continuous_usage_stats (vLLM does)")
                    new = int(usage["completion_tokens"])
                    prompt = int(usage.get("prompt_tokens", prompt))
                    if new > count:
                        # a chunk that brings several tokens at once: only the last one's time is known
                        if 1 <= new <= max_tokens:
                            arrivals[new - 1] = now
                        count = new
                        if progress is not None:
                            progress[0] = count
                    for choice in chunk.get("choices") or []:
                        finish = choice.get("finish_reason") or finish
        except StreamChunkError as exc:
            raise EndpointError(f"POST {url}: {exc}") from None
        except httpx.ConnectError as exc:
            raise EndpointError(f"cannot reach {url}: {exc} (is the server running?)") from None
        except httpx.TimeoutException as exc:
            raise EndpointError(f"POST {url} timed out: {exc}") from None
        except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
            raise EndpointError(f"POST {url}: connection dropped mid-stream ({exc}); did the server crash?") from None
        if not done or count < max_tokens:
            raise EndpointError(f"POST {url}: stream ended after {count} of {max_tokens} tokens"
                                f"{'' if done else ' without [DONE]'}; did the server fail mid-request?")
        return StreamResult(t_sent=t_sent, arrivals=arrivals, completion_tokens=count, prompt_tokens=prompt,
                            finish_reason=finish)

    def async_client(self, connections: int) -> httpx.AsyncClient:
        limits = httpx.Limits(max_connections=connections + 8, max_keepalive_connections=connections + 8)
        return httpx.AsyncClient(headers=self._headers, timeout=self._timeout, limits=limits,
                                 transport=self._async_transport, auth=self._auth)


# ---- turning token arrivals into steps ----------------------------------------------

@dataclass(frozen=True)
class LockstepStep:
    """A decode step recovered from a synchronised batch's token bursts."""

    time_s: float  # gap between this burst and the previous one, s
    decode_seqs: int
    decode_ctx_tokens: int  # sum over requests of context incl. the new token
    spread_s: float  # max - min arrival over the requests, of this step's or the previous step's tokens, s
    end_s: float  # median arrival of this step's tokens (perf_counter), s


def lockstep_decode_steps(streams: list[StreamResult], prompt_lens: list[int], *,
                          max_spread: float = 0.25) -> list[LockstepStep]:
    """Decode steps of requests that all decode together.

    From the burst in which the last request got its first token on, each
    engine step emits one more token for every request. Step j's time is the
    median over requests of (arrival of its token k_i + j) - (arrival of
    k_i + j - 1), where k_i is request i's token count at that first burst.
    A step is kept only if every request's token is known and the burst's
    spread is at most ``max_spread`` of the step time.
    """
    if not streams:
        return []
    arr = [np.asarray(s.arrivals, dtype=np.float64) for s in streams]
    firsts = [a[0] for a in arr]
    if any(math.isnan(t) for t in firsts):
        return []
    t_star = max(firsts)
    # tokens each request has at the burst t_star: tokens arriving within a fraction of a step of it
    # belong to it (a burst of many requests takes the server a while to stream out)
    diffs = np.concatenate([np.diff(a[~np.isnan(a)]) for a in arr])
    diffs = diffs[diffs > 0]
    slack = 0.3 * float(np.median(diffs)) if len(diffs) else 0.002
    base = [int(np.sum(a[~np.isnan(a)] <= t_star + slack)) for a in arr]
    steps: list[LockstepStep] = []
    n_max = min(len(a) - b for a, b in zip(arr, base))
    prev = np.array([a[b - 1] for a, b in zip(arr, base)])
    for j in range(1, n_max + 1):
        cur = np.array([a[b - 1 + j] for a, b in zip(arr, base)])
        if np.isnan(cur).any() or np.isnan(prev).any():
            prev = cur
            continue
        gap = float(np.median(cur - prev))
        # both bursts bounding the step must be tight, or the gap is not one step
        spread = float(max(cur.max() - cur.min(), prev.max() - prev.min()))
        if gap > 0 and spread <= max_spread * gap:
            # token (b + j) of request i is produced by a step whose input is token b + j - 1,
            # which attends over prompt + (b + j - 1) positions
            ctx = int(sum(p + b + j - 1 for p, b in zip(prompt_lens, base)))
            steps.append(LockstepStep(time_s=gap, decode_seqs=len(streams), decode_ctx_tokens=ctx,
                                      spread_s=spread, end_s=float(np.median(cur))))
        prev = cur
    return steps


@contextmanager
def gc_frozen() -> Iterator[None]:
    """Keep the objects alive now out of the garbage collector while timing a server: a full
    collection over a large heap stalls the event loop for tens of ms, and every send and token
    time with it (``gc.freeze``; the new garbage is still collected)."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


# ---- the driver -------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class HttpConfig:
    """How to reach and describe the server. Limits the server does not
    publish (max_num_seqs, max_num_batched_tokens) must be given; the
    defaults are vLLM's server defaults on CPU."""

    endpoint: str
    model: str | None = None  # served model name; None = the server's first model
    api_key: "ApiKey | None" = None  # a str is wrapped so it never prints (driftsim.profiling.secrets)
    max_num_seqs: int = 128
    max_num_batched_tokens: int = 2048
    max_model_len: int | None = None  # None = from /v1/models
    vocab_size: int = 4000  # token ids for prompts are drawn from [100, vocab_size)
    gate_tokens: int = 512  # prompt of the gate request: its prefill must outlast sending a probe's requests
    seed: int = 0
    timeout_s: float = 600.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "api_key", as_key(self.api_key))


class HttpDriver:
    """Runs sweep points against a live server (see the module docstring)."""

    source = "http"

    def __init__(self, config: HttpConfig, *, client: OpenAIClient | None = None) -> None:
        self.config = config
        self.client = client or OpenAIClient(config.endpoint, api_key=config.api_key, timeout_s=config.timeout_s)
        self._rng = np.random.default_rng(config.seed)
        self._t0 = time.perf_counter()
        self._model: str | None = config.model
        self._cache: dict | None = None
        self._max_model_len: int | None = config.max_model_len

    def __enter__(self) -> "HttpDriver":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def start(self) -> None:
        """Check the endpoint and read what it publishes about itself."""
        self.client.health()
        models = self.client.models()
        if not models:
            raise EndpointError(f"{self.client.base_url}/v1/models lists no model")
        if self._model is None:
            self._model = str(models[0].get("id"))
        entry = next((m for m in models if m.get("id") == self._model), None)
        if entry is None:
            raise EndpointError(f"model {self._model!r} is not served at {self.client.base_url}; "
                                f"it serves {', '.join(str(m.get('id')) for m in models)}")
        if self._max_model_len is None:
            self._max_model_len = int(entry.get("max_model_len") or 2048)
        metrics = self.client.metrics()
        try:
            self._cache = cache_config(metrics)
        except EndpointError:
            self._cache = None
        self._engine_metrics = metrics.get("vllm:iteration_tokens_total_count") is not None
        self._version = self.client.version()

    def close(self) -> None:
        self.client.close()

    def limits(self) -> EngineLimits:
        kv = self._cache["num_gpu_blocks"] * self._cache["block_size"] if self._cache else None
        return EngineLimits(max_num_seqs=self.config.max_num_seqs,
                            max_num_batched_tokens=self.config.max_num_batched_tokens,
                            max_model_len=int(self._max_model_len or 2048), kv_tokens=kv)

    def metadata(self) -> dict:
        c = self._cache or {}
        return {
            "engine": "vllm" if self._cache else "openai-compatible", "engine_version": self._version,
            "driver": "http", "endpoint": self.client.base_url, "model": self._model,
            "model_name": str(self._model).rstrip("/").split("/")[-1],
            "dtype": None, "device": None, "device_name": None,
            "limits": {"max_num_seqs": self.config.max_num_seqs,
                       "max_num_batched_tokens": self.config.max_num_batched_tokens,
                       "max_model_len": self._max_model_len, "chunked_prefill": True,
                       "enable_prefix_caching": c.get("enable_prefix_caching"),
                       "source": "max_model_len from /v1/models; the rest as given to driftsim profile"},
            "num_gpu_blocks": c.get("num_gpu_blocks"), "block_size": c.get("block_size"),
            "gpu_memory_utilization": c.get("gpu_memory_utilization"),
            "engine_metrics": bool(self._engine_metrics),
            "host": socket.gethostname(), "platform": platform.platform(),
        }

    # ---- probes ---------------------------------------------------------------------
    def _prompt(self, n: int) -> list[int]:
        return self._rng.integers(100, max(101, self.config.vocab_size), size=n).tolist()

    def _engine_counters(self) -> dict:
        if not self._engine_metrics:
            return {}
        m = self.client.metrics()
        return {
            "steps": metric_total(m, "vllm:iteration_tokens_total_count"),
            "tokens": metric_total(m, "vllm:iteration_tokens_total_sum"),
            "prefill_sum": metric_total(m, "vllm:request_prefill_time_seconds_sum"),
            "itl_sum": metric_total(m, "vllm:inter_token_latency_seconds_sum"),
            "itl_count": metric_total(m, "vllm:inter_token_latency_seconds_count"),
            "preemptions": metric_total(m, "vllm:num_preemptions_total"),
            "running": metric_total(m, "vllm:num_requests_running"),
        }

    def supports(self, point: ProbePoint) -> bool:
        """Whether a probe can attribute this point's steps: prefills and
        joins must fit in one step's token budget (chunk boundaries are not
        visible from outside)."""
        T = self.config.max_num_batched_tokens
        if point.kind == "prefill":
            return point.batch * point.prompt_len <= T
        if point.kind == "mixed":
            return point.join_count * point.join_prompt_len <= T - point.batch
        return True

    def run_point(self, point: ProbePoint, *, warmup: bool = False,
                  on_row: Callable[[dict], None] | None = None) -> list[dict]:
        """Run one planned point as an HTTP probe; rows for the steps whose
        boundaries the probe can establish (see the module docstring)."""
        limits = self.limits()
        if not self.supports(point):
            return []
        before = self._engine_counters()
        if before.get("running"):
            raise EndpointError(f"the server is already running {before['running']:.0f} request(s) from another client; "
                                "profile an otherwise idle server")
        with gc_frozen():
            probe = asyncio.run(self._probe(point, limits))
        after = self._engine_counters()
        rows = self._rows(point, probe, before, after, warmup)
        for row in rows:
            if on_row is not None:
                on_row(row)
        return rows

    async def _probe(self, point: ProbePoint, limits: EngineLimits) -> dict:
        T, M = limits.max_num_batched_tokens, limits.max_model_len
        model = str(self._model)
        n = point.batch + point.join_count + 1
        async with self.client.async_client(n) as ac:
            gate = None
            if point.kind != "prefill" or point.batch > 1:
                gate_len = max(16, min(T, M - 2, self.config.gate_tokens))
                gate = asyncio.create_task(self.client.stream(ac, model, self._prompt(gate_len), 1))
                await asyncio.sleep(0.02)  # let the gate reach the engine first
            if point.kind == "prefill":
                lens, outs = [point.prompt_len] * point.batch, [1] * point.batch
            elif point.kind == "decode":
                lens, outs = [point.prompt_len] * point.batch, [point.decode_steps + 1] * point.batch
            else:
                lens = [point.prompt_len] * point.batch
                outs = [point.mixed_decoder_tokens(limits) + 4] * point.batch
            progress = [[0] for _ in lens]
            tasks = [asyncio.create_task(self.client.stream(ac, model, self._prompt(p), o, prog))
                     for p, o, prog in zip(lens, outs, progress)]
            joins: list[asyncio.Task] = []
            if point.kind == "mixed":
                # join once every decoder has streamed its first few tokens
                need = point.decode_steps + 2
                while not any(t.done() for t in tasks) and min(p[0] for p in progress) < need:
                    await asyncio.sleep(0.001)
                joins = [asyncio.create_task(self.client.stream(ac, model, self._prompt(point.join_prompt_len), 1))
                         for _ in range(point.join_count)]
            results = await asyncio.gather(*(([gate] if gate else []) + tasks + joins))
        gate_res = results[0] if gate else None
        main = results[1:1 + len(tasks)] if gate else results[:len(tasks)]
        join_res = results[len(results) - len(joins):] if joins else []
        return {"gate": gate_res, "main": list(main), "lens": lens, "joins": list(join_res),
                "gate_len": gate_res.prompt_tokens if gate_res else 0}

    def _rows(self, point: ProbePoint, probe: dict, before: dict, after: dict, warmup: bool) -> list[dict]:
        rows: list[dict] = []
        main, lens = probe["main"], probe["lens"]
        engine = {k: (after.get(k) or 0) - (before.get(k) or 0) for k in ("steps", "tokens", "prefill_sum", "itl_sum", "itl_count", "preemptions")} \
            if before and after else {}
        if engine:
            # vLLM's iteration_tokens counts every prompt token and every generated token once
            streams = ([probe["gate"]] if probe["gate"] else []) + main + probe["joins"]
            engine["expected_tokens"] = sum(s.prompt_tokens + s.completion_tokens for s in streams)
            if engine["preemptions"] or engine["tokens"] != engine["expected_tokens"]:
                return []  # preemption, recomputation or another client's requests: no clean attribution

        def row(kind_fields: dict, time_s: float, raw: dict, step: int) -> dict:
            r = empty_row()
            r.update(kind_fields)
            r.update(source=self.source, point_id=point.point_id, point_kind="warmup" if warmup else point.kind,
                     rep=point.rep, step=step, step_time_s=time_s,
                     phase=phase_of(kind_fields.get("prefill_tokens", 0), kind_fields.get("decode_seqs", 0)),
                     num_tokens=kind_fields.get("prefill_tokens", 0) + kind_fields.get("decode_seqs", 0),
                     num_reqs=kind_fields.get("prefill_seqs", 0) + kind_fields.get("decode_seqs", 0),
                     raw=json.dumps({**raw, "engine": engine}, separators=(",", ":")), warmup=warmup,
                     t_s=time.perf_counter() - self._t0)
            return r

        def gate_gap_row(L: int, B: int, steps: int) -> dict | None:
            """The batch's one prefill step, timed from the gate's first token
            to theirs; None unless they came together and the engine ran
            exactly ``steps`` steps (so nothing else shared the probe)."""
            if probe["gate"] is None or B * L > self.config.max_num_batched_tokens:
                return None
            g = probe["gate"].arrivals[0]
            firsts = np.array([s.arrivals[0] for s in main])
            spread = float(firsts.max() - firsts.min())
            gap = float(np.median(firsts) - g)
            steps_ok = engine.get("steps") in (None, steps) if engine else True
            if not (gap > 0 and spread <= 0.25 * gap and steps_ok):
                return None
            feats = {"prefill_tokens": B * L, "prefill_seqs": B, "prefill_attn_tokens": B * chunk_attn_tokens(0, L)}
            return row(feats, gap, {"method": "gate-gap", "spread_s": spread}, 0)

        if point.kind == "prefill":
            L, B = point.prompt_len, point.batch
            if B == 1 and engine.get("steps") == 1 and engine.get("prefill_sum"):
                feats = {"prefill_tokens": L, "prefill_seqs": 1, "prefill_attn_tokens": chunk_attn_tokens(0, L)}
                rows.append(row(feats, float(engine["prefill_sum"]), {"method": "engine-prefill-time"}, 0))
            elif B > 1 and (r := gate_gap_row(L, B, 2)) is not None:
                rows.append(r)
            return rows

        B, C = point.batch, point.prompt_len
        if point.kind == "decode" and (r := gate_gap_row(C, B, 2 + point.decode_steps)) is not None:
            # the decode batch starts with one prefill step of all its prompts: a prefill row for free
            rows.append(r)
        if point.kind == "decode" and engine.get("itl_count") and B * C <= self.config.max_num_batched_tokens \
                and engine["itl_count"] == B * point.decode_steps:
            # one prefill step for all, then decode_steps steps in lockstep: the engine's own
            # inter-token latencies average exactly those steps; a linear model sees their mean
            # context, so one row with the mean is as good as every step and far less noisy
            n = point.decode_steps
            ctx = B * (C + (n + 1) / 2)  # contexts C+1 .. C+n, mean C + (n+1)/2
            feats = {"decode_seqs": B, "decode_ctx_tokens": int(round(ctx))}
            return rows + [row(feats, engine["itl_sum"] / engine["itl_count"],
                               {"method": "engine-itl-mean", "steps": n}, 1)]
        steps = lockstep_decode_steps(main, lens)
        join_end = None
        if point.kind == "mixed" and probe["joins"]:
            jf = np.array([s.arrivals[0] for s in probe["joins"]])
            if not np.isnan(jf).any() and jf.max() - jf.min() < 0.25 * max(1e-3, np.median([s.time_s for s in steps] or [1])):
                join_end = float(np.median(jf))
        first = len(rows)  # a decode probe's prefill row is its step 0
        for j, st in enumerate(steps, start=first):
            feats: dict = {"decode_seqs": st.decode_seqs, "decode_ctx_tokens": st.decode_ctx_tokens}
            method = "lockstep-gap"
            if join_end is not None and abs(st.end_s - join_end) <= 0.25 * st.time_s:
                L, J = point.join_prompt_len, point.join_count
                feats.update(prefill_tokens=J * L, prefill_seqs=J, prefill_attn_tokens=J * chunk_attn_tokens(0, L))
                method = "join-gap"
            rows.append(row(feats, st.time_s, {"method": method, "spread_s": st.spread_s}, j))
        return rows

"""Clients that give up: per-request timeouts, retries with backoff, and users who abandon.

One :class:`ClientConfig` says what a client does; the simulator
(:class:`SimClient`) and the real replay gateway
(:class:`driftsim.profiling.gateway.ReplayGateway`) both follow it, so a timeout means
the same thing on both sides:

- **timeout** (``timeout_s``): an attempt that has not completed ``timeout_s``
  after it entered the gateway is given up. Still waiting at the gateway, it
  is taken out of the policy's queue; already sent, the engine aborts it and
  frees its KV at the end of the step in progress (vLLM aborts a request
  whose client disconnected between steps), and a gateway slot frees at once.
- **retries** (``retries``): a timed-out or failed attempt is sent again, up
  to ``retries`` more times, as a new attempt with the same request id:
  attempt ``k + 1`` enters the gateway ``backoff_s * backoff_factor**(k - 1)``
  after attempt ``k`` failed (deterministic, no jitter).
- **abandonment** (``abandon_s``, per tenant in ``abandon_tenant_s``): the user
  leaves if no token has reached them ``abandon_s`` after the request first
  arrived, whatever attempt is under way; no retry follows.

Each request ends with a status (``ok``, ``timeout``: every attempt timed
out, ``abandoned``, and on the real side ``error``) and its number of
attempts; latencies of a retried request run from its first arrival (what
the user waited).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping

import simpy

from driftsim.sim.config import ConfigError
from driftsim.sim.request import SimRequest
from driftsim.sim.results import STATUS_ABANDONED, STATUS_TIMEOUT, ResultRecorder

_BACKOFF = object()  # a request between a failed attempt and its retry


@dataclass(frozen=True, kw_only=True)
class ClientConfig:
    """What a client does when a request takes too long (see the module docstring)."""

    timeout_s: float | None = None  # per attempt, from its entry into the gateway; None = wait forever
    retries: int = 0  # further attempts after a timeout (real side: or an error)
    backoff_s: float = 1.0  # wait before the first retry, s
    backoff_factor: float = 2.0  # each further retry waits this much longer
    abandon_s: float | None = None  # the user leaves without a first token by then (from first arrival)
    abandon_tenant_s: Mapping[str, float] = field(default_factory=dict)  # per-tenant abandon_s

    def __post_init__(self) -> None:
        def number(x: object) -> bool:
            return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

        def positive(name: str, x: object) -> None:
            if x is not None and not (number(x) and x > 0):
                raise ConfigError(f"client.{name}: expected a number of seconds > 0, got {x!r}")

        positive("timeout_s", self.timeout_s)
        positive("abandon_s", self.abandon_s)
        if not isinstance(self.abandon_tenant_s, Mapping):
            raise ConfigError(f"client.abandon_tenant_s: expected a table tenant = seconds, got {self.abandon_tenant_s!r}")
        for tenant, x in self.abandon_tenant_s.items():
            positive(f"abandon_tenant_s[{tenant!r}]", x)
        if not isinstance(self.retries, int) or isinstance(self.retries, bool) or not 0 <= self.retries <= 100:
            raise ConfigError(f"client.retries: expected an integer in 0..100, got {self.retries!r}")
        if not (number(self.backoff_s) and self.backoff_s >= 0):
            raise ConfigError(f"client.backoff_s: expected seconds >= 0, got {self.backoff_s!r}")
        if not (number(self.backoff_factor) and 1 <= self.backoff_factor <= 100):
            raise ConfigError(f"client.backoff_factor: expected a number in 1..100, got {self.backoff_factor!r}")

    @property
    def active(self) -> bool:
        """Whether the client ever gives up (otherwise it changes nothing)."""
        return self.timeout_s is not None or self.abandon_s is not None or bool(self.abandon_tenant_s)

    def backoff(self, attempt: int) -> float:
        """Seconds between attempt ``attempt``'s failure and the next attempt."""
        return self.backoff_s * self.backoff_factor ** (attempt - 1)

    def abandon_after(self, tenant: str) -> float | None:
        return self.abandon_tenant_s.get(tenant, self.abandon_s)

    def timeout_reason(self, attempt: int, tokens: int, of: int) -> str:
        return (f"timed out after {self.timeout_s:g} s (attempt {attempt} of {1 + self.retries}, "
                f"{tokens} of {of} tokens)")

    def abandon_reason(self, after_s: float, attempt: int) -> str:
        return f"abandoned: no first token within {after_s:g} s (attempt {attempt})"


class SimClient:
    """The client side of a simulation: starts the timers and gives up as :class:`ClientConfig` says.

    Sits between arrivals and the gateway (:meth:`submit`) and filters
    completions (:meth:`completed`). Continuous replicas only (a micro-batch
    worker's blocking ``generate()`` cannot drop one request).
    """

    def __init__(self, env: simpy.Environment, config: ClientConfig, gateway, recorder: ResultRecorder,
                 replicas: list) -> None:
        self.env = env
        self.cfg = config
        self.gw = gateway
        self.rec = recorder
        self._live: dict[int, object] = {}  # idx -> the attempt under way (SimRequest) or _BACKOFF
        self._attempt: dict[int, int] = {}
        self._saw_token: set[int] = set()  # a token reached the user in an earlier attempt
        self._where: dict[int, object] = {}  # idx -> replica the attempt was dispatched to
        for replica in replicas:  # note where each dispatch goes, to abort it there
            replica.submit = self._noting(replica, replica.submit)

    def _noting(self, replica, submit):
        def noted(req: SimRequest) -> None:
            self._where[req.idx] = replica
            submit(req)
        return noted

    # ---- arrivals and completions
    def submit(self, req: SimRequest) -> None:
        """First attempt of a request, at its arrival."""
        i = req.idx
        self._attempt[i] = 1
        after = self.cfg.abandon_after(req.tenant)
        if after is not None:
            self._at(after, lambda _ev, i=i, after=after: self._abandon(i, after))
        self._send(req)

    def completed(self, req: SimRequest) -> bool:
        """A replica finished ``req``: True if its client was still waiting (record it)."""
        if self._live.get(req.idx) is not req:
            return False
        del self._live[req.idx]
        self._where.pop(req.idx, None)
        self.rec.attempts[req.idx] = self._attempt[req.idx]
        return True

    # ---- internals
    def _at(self, delay: float, fn) -> None:
        ev = self.env.timeout(delay)
        ev.callbacks.append(fn)

    def _send(self, req: SimRequest) -> None:
        self._live[req.idx] = req
        if self.cfg.timeout_s is not None:
            self._at(self.cfg.timeout_s, lambda _ev, req=req: self._timeout(req))
        self.gw.submit(req)

    def _withdraw(self, req: SimRequest) -> int:
        """Take the attempt out of the gateway or its engine; the tokens the user had from it."""
        now = self.env.now
        replica = self._where.pop(req.idx, None)
        if replica is None:
            if not self.gw.policy.remove(req):
                raise RuntimeError(f"request {req.request_id} is neither waiting at the gateway nor dispatched")
            return 0
        tokens = replica.core.generated_by(req, now)
        replica.abort(req)
        self.gw.finished(req, now, output_tokens=tokens)
        return tokens

    def _timeout(self, req: SimRequest) -> None:
        i = req.idx
        if self._live.get(i) is not req:
            return  # finished, or the user left, before the timer fired
        tokens = self._withdraw(req)
        if tokens:
            self._saw_token.add(i)
        k = self._attempt[i]
        reason = self.cfg.timeout_reason(k, tokens, req.output_tokens)
        if k <= self.cfg.retries:
            self._live[i] = _BACKOFF
            self._at(self.cfg.backoff(k), lambda _ev, req=req: self._retry(req))
            self.rec.reasons[i] = reason  # overwritten if a later attempt ends otherwise
            return
        del self._live[i]
        self.rec.attempts[i] = k
        self.rec.give_up(i, STATUS_TIMEOUT, reason, tokens)

    def _retry(self, old: SimRequest) -> None:
        i = old.idx
        if self._live.get(i) is not _BACKOFF:
            return  # the user left meanwhile
        self._attempt[i] += 1
        self.rec.attempts[i] = self._attempt[i]
        req = SimRequest(idx=i, request_id=old.request_id, arrival_s=self.env.now, tenant=old.tenant,
                         priority=old.priority, input_tokens=old.input_tokens, output_tokens=old.output_tokens,
                         est_tokens=old.est_tokens, slo_e2e_s=old.slo_e2e_s, prefix_ids=old.prefix_ids,
                         prefix_id_tokens=old.prefix_id_tokens)
        self._send(req)

    def _abandon(self, i: int, after: float) -> None:
        live = self._live.get(i)
        if live is None or i in self._saw_token:
            return
        if live is not _BACKOFF:
            replica = self._where.get(i)
            if live.first_token_s >= 0 or (replica is not None and replica.core.generated_by(live, self.env.now)):
                return  # a token has reached the user
            self._withdraw(live)
        del self._live[i]
        self.rec.attempts[i] = self._attempt[i]
        self.rec.give_up(i, STATUS_ABANDONED, self.cfg.abandon_reason(after, self._attempt[i]))

"""The DriftSched workload: a learning phase, a pause, then a stress phase.

Reproduces the original client (``workload_generator.py`` and
``prompts_dataset.py`` of kpalania1/driftsched) as a pure function that
returns one request table in :data:`driftsim.traces.schema.REQUEST_SCHEMA`:

* Phase 1, learning: ``n_learning`` = 1000 requests, gaps uniform in
  [0.05, 0.15] s, job mix short_qa 40 / summary 25 / technical 25 /
  report 10 %.
* Pause ``phase_gap_s`` (see below).
* Phase 2, stress: ``n_stress`` = 2000 requests, gaps uniform in
  [0.005, 0.03] s, mix 10 / 20 / 40 / 30 %.
* Tenant uniform over premium / standard / batch (priority 1 / 2 / 3).
* Prompt: ``"Request ID {i}. Tenant tenant-{tenant}. Job type {job}. "``
  followed by a template of the job type filled with a topic, drawn
  uniformly from the 59 topics x 5 templates (the original's lists). The
  header keeps the original's ``tenant_id`` spelling (``tenant-premium``);
  the ``tenant`` column holds the tier name, as the original's queues do.
* ``max_tokens``: 64 / 256 / 384 / 512 by job type.
* ``request_id`` is the original's index ``i`` (0-based): phase 1 is
  ``request_id < n_learning``.

Arrival times. The original sleeps *before* each submission, so the first
request arrives one gap after the start, and request ``i`` arrives at the
sum of the first ``i + 1`` gaps. After phase 1 the original waits until the
gateway's queues are empty (polled every 2 s) and then 15 s more for the
last in-flight batch. A trace generator cannot know when the simulated
queue drains, so the pause is a parameter: phase 2's first gap starts
``phase_gap_s`` (default 15 s) after the *last learning arrival*. That
equals the original's pause only if the queue is already empty at the last
learning arrival; when the simulated queue is still busy then (likely at
about 10 req/s against a batch-synchronous engine), measure when it
drained in a first simulation and regenerate with
the same seed and ``stress_start_s = drain time + 15`` (every other column
is unchanged, the streams are independent): that is the original's
timing. The 2 s polling granularity is not modelled.

Output lengths (the ``output_tokens`` column, tokens). The original
measures what Qwen1.5-1.8B-Chat generates at temperature 0.7 under the
job's ``max_tokens``. Default per job type: with probability ``p_cap`` the
model runs into ``max_tokens`` (output = max_tokens), otherwise it stops
early at ``ceil(max_tokens * f)``, ``f ~ Beta(a, b)``. Why: the prompts
("Write a detailed report on X...", "Explain the internal architecture of
X.") ask for far more text than the caps allow, and a small chat model
answers them at length, so most generations are truncated; some stop early.
The paper's finding that with tokenizer-aware counting the calibration
factors stay near 1.0 says the same: mean(actual) / base(category) ~ 1 in
tokens, and base equals max_tokens here. Our defaults give
mean(actual) / max_tokens of 0.97 (short_qa), 0.90 (summary), 0.92
(technical) and 0.93 (report). The split variant observes whitespace words
of the output instead (about 0.75 per token; see
:func:`driftsim.admission.estimation.words_from_tokens`), which is what drifts its
calibration below 1.0. Pass ``output_dists`` to change any of this.

Category. Not a column: derive it with
:func:`driftsim.admission.estimation.classify_category` on the prompt, as the gateway does.
With these templates and the header (which names the job type) it always
equals the job type.

Determinism: one ``numpy.random.SeedSequence(seed)`` spawns independent
streams for gaps, tenants, job types, prompts and output lengths, so changing
e.g. the output model leaves arrivals and prompts unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from driftsim.traces.tokens import TokenCounter, WhitespaceCounter
from driftsim.traces.schema import REQUEST_SCHEMA

JOB_TYPES: tuple[str, ...] = ("short_qa", "summary", "technical", "report")

#: max_tokens per job type (the original's TOKEN_LIMITS).
TOKEN_LIMITS: dict[str, int] = {"short_qa": 64, "summary": 256, "technical": 384, "report": 512}

LEARNING_MIX: dict[str, float] = {"short_qa": 0.40, "summary": 0.25, "technical": 0.25, "report": 0.10}
STRESS_MIX: dict[str, float] = {"short_qa": 0.10, "summary": 0.20, "technical": 0.40, "report": 0.30}

TENANTS: tuple[str, ...] = ("premium", "standard", "batch")
PRIORITIES: dict[str, int] = {"premium": 1, "standard": 2, "batch": 3}

# Topics and templates: the original's prompt data (prompts_dataset.py), kept verbatim.
TOPICS: tuple[str, ...] = (
    "DNS", "BGP", "OSPF", "MPLS", "VPN", "SD-WAN", "Kubernetes", "Docker", "AWS", "Azure",
    "Kafka", "Redis", "PostgreSQL", "MongoDB", "API Gateway", "Load Balancing", "JWT", "OAuth",
    "TLS", "LLM Inference", "TensorRT", "CUDA", "GPU Scheduling", "Vector Databases", "RAG",
    "Microservices", "Service Mesh", "Observability", "CI/CD", "Zero Trust",
    "Cloud Security", "Network Security", "Firewalls", "IDS/IPS", "SRE", "Autoscaling",
    "Distributed Tracing", "Rate Limiting", "Caching", "CDN", "Data Pipelines",
    "Event Streaming", "GPU Memory Management", "KV Cache", "PagedAttention",
    "Continuous Batching", "Model Quantization", "Inference Optimization",
    "Multi-Tenant Systems", "Queue Scheduling", "Token Estimation", "Embeddings",
    "Serverless", "Edge Computing", "Terraform", "Ansible", "Prometheus", "Grafana", "OpenTelemetry",
)  # fmt: skip

TEMPLATES: dict[str, tuple[str, ...]] = {
    "short_qa": (
        "What is {topic} and why is it important?",
        "How does {topic} work?",
        "What problem does {topic} solve?",
        "When should {topic} be used?",
        "What are the benefits of {topic}?",
    ),
    "summary": (
        "Summarize {topic} architecture and key components.",
        "Summarize the operational benefits of {topic}.",
        "Summarize security considerations for {topic}.",
        "Summarize scalability challenges in {topic}.",
        "Summarize best practices for implementing {topic}.",
    ),
    "technical": (
        "Explain the internal architecture of {topic}.",
        "Explain performance tradeoffs associated with {topic}.",
        "Explain implementation details of {topic}.",
        "Explain bottlenecks commonly observed in {topic}.",
        "Explain monitoring and observability requirements for {topic}.",
    ),
    "report": (
        "Write a detailed report on {topic}, including architecture, performance, scalability, security, and operational considerations.",
        "Write a comprehensive analysis of {topic} deployment strategies and best practices.",
        "Write a report comparing different approaches to {topic}.",
        "Write a report discussing reliability, resilience, and risk management for {topic}.",
        "Write a report evaluating future trends and innovations related to {topic}.",
    ),
}

#: The original's prompt lists: every topic x every template, topic-major.
PROMPTS: dict[str, tuple[str, ...]] = {
    job: tuple(t.format(topic=topic) for topic in TOPICS for t in TEMPLATES[job]) for job in JOB_TYPES
}

N_PROMPTS = len(TOPICS) * 5  # prompts per job type (59 topics x 5 templates)
assert all(len(p) == N_PROMPTS for p in PROMPTS.values())


def prompt_header(request_id: int, tenant: str, job_type: str) -> str:
    """The original's prefix: ``"Request ID i. Tenant tenant-t. Job type j. "``."""
    return f"Request ID {request_id}. Tenant tenant-{tenant}. Job type {job_type}. "


@dataclass(frozen=True)
class OutputLengthDist:
    """Real output length as a fraction of ``max_tokens``: a point mass at the cap plus a Beta body.

    With probability ``p_cap`` the output is ``max_tokens``; otherwise
    ``ceil(max_tokens * f)`` with ``f ~ Beta(beta_a, beta_b)``, at least
    ``min_tokens``. Mean fraction: ``p_cap + (1 - p_cap) * a / (a + b)``.
    """

    p_cap: float
    beta_a: float = 4.0
    beta_b: float = 2.0
    min_tokens: int = 1

    def sample(self, rng: np.random.Generator, max_tokens: np.ndarray) -> np.ndarray:
        """Draw one length per entry of ``max_tokens`` (int64, in [min_tokens, max_tokens])."""
        max_tokens = np.asarray(max_tokens, dtype=np.int64)
        n = len(max_tokens)
        capped = rng.random(n) < self.p_cap
        frac = rng.beta(self.beta_a, self.beta_b, n)
        early = np.ceil(max_tokens * frac).astype(np.int64)
        out = np.where(capped, max_tokens, early)
        return np.clip(out, np.minimum(self.min_tokens, max_tokens), max_tokens)


#: Default output model per job type (see the module docstring for why).
DEFAULT_OUTPUT_DISTS: dict[str, OutputLengthDist] = {
    "short_qa": OutputLengthDist(p_cap=0.90),
    "summary": OutputLengthDist(p_cap=0.70),
    "technical": OutputLengthDist(p_cap=0.75),
    "report": OutputLengthDist(p_cap=0.80),
}


def _mix(mix: Mapping[str, float]) -> np.ndarray:
    unknown = set(mix) - set(JOB_TYPES)
    if unknown:
        raise ValueError(f"unknown job types in mix: {sorted(unknown)}; known: {', '.join(JOB_TYPES)}")
    p = np.array([float(mix.get(j, 0.0)) for j in JOB_TYPES])
    if np.any(p < 0) or p.sum() <= 0:
        raise ValueError(f"mix weights must be >= 0 with a positive sum, got {dict(mix)}")
    return p / p.sum()


def driftsched_workload(
    *,
    seed: int = 0,
    n_learning: int = 1000,
    n_stress: int = 2000,
    learning_gap_s: tuple[float, float] = (0.05, 0.15),
    stress_gap_s: tuple[float, float] = (0.005, 0.03),
    phase_gap_s: float = 15.0,
    stress_start_s: float | None = None,
    learning_mix: Mapping[str, float] = LEARNING_MIX,
    stress_mix: Mapping[str, float] = STRESS_MIX,
    tenants: Sequence[str] = TENANTS,
    priorities: Mapping[str, int] = PRIORITIES,
    output_dists: Mapping[str, OutputLengthDist] = DEFAULT_OUTPUT_DISTS,
    counter: TokenCounter | None = None,
    slo_ttft_s: Mapping[str, float] | None = None,
    slo_e2e_s: Mapping[str, float] | None = None,
) -> pl.DataFrame:
    """Generate the DriftSched two-phase workload as a request table (deterministic for a seed).

    ``counter`` counts ``input_tokens`` from the prompt (default
    :class:`~driftsim.traces.tokens.WhitespaceCounter`, the original's split
    variant; pass a :class:`~driftsim.traces.tokens.TokenizerCounter` for real
    tokens). ``stress_start_s`` (absolute seconds, never before the last
    learning arrival) overrides ``phase_gap_s``: phase 2's first gap starts
    there. ``slo_ttft_s`` / ``slo_e2e_s`` optionally give per-tenant
    objectives (the original has none: null by default).
    """
    tenants = tuple(tenants)
    _check_workload_args(n_learning=n_learning, n_stress=n_stress, learning_gap_s=learning_gap_s,
                         stress_gap_s=stress_gap_s, phase_gap_s=phase_gap_s, tenants=tenants,
                         priorities=priorities, output_dists=output_dists)  # fmt: skip
    counter = counter or WhitespaceCounter()
    n = n_learning + n_stress
    ss = np.random.SeedSequence(seed)
    r_gap, r_tenant, r_job, r_prompt, r_out = (np.random.default_rng(s) for s in ss.spawn(5))
    arrival = _arrivals(r_gap, n_learning=n_learning, n_stress=n_stress, learning_gap_s=learning_gap_s,
                        stress_gap_s=stress_gap_s, phase_gap_s=phase_gap_s, stress_start_s=stress_start_s)  # fmt: skip

    tenant_ix = r_tenant.integers(0, len(tenants), n)
    jobs_ix = np.concatenate(
        [
            r_job.choice(len(JOB_TYPES), size=n_learning, p=_mix(learning_mix)),
            r_job.choice(len(JOB_TYPES), size=n_stress, p=_mix(stress_mix)),
        ]
    ).astype(np.int64)
    prompt_ix = r_prompt.integers(0, N_PROMPTS, n)

    tenant_col = [tenants[k] for k in tenant_ix]
    job_col = [JOB_TYPES[k] for k in jobs_ix]
    prompts = [
        prompt_header(i, tenant_col[i], job_col[i]) + PROMPTS[job_col[i]][prompt_ix[i]] for i in range(n)
    ]
    max_tokens = np.array([TOKEN_LIMITS[j] for j in job_col], dtype=np.int64)
    output = np.empty(n, dtype=np.int64)
    for k, job in enumerate(JOB_TYPES):
        idx = np.flatnonzero(jobs_ix == k)
        output[idx] = output_dists[job].sample(r_out, max_tokens[idx])

    def per_tenant(m: Mapping[str, float] | None) -> list[float | None]:
        return [None if m is None else m.get(t) for t in tenant_col]

    return pl.DataFrame(
        {
            "request_id": np.arange(n, dtype=np.int64),
            "arrival_s": arrival,
            "tenant": tenant_col,
            "input_tokens": [max(1, counter.count(p)) for p in prompts],
            "output_tokens": output,
            "prompt": prompts,
            "max_tokens": max_tokens,
            "priority": [priorities[t] for t in tenant_col],
            "slo_ttft_s": per_tenant(slo_ttft_s),
            "slo_e2e_s": per_tenant(slo_e2e_s),
            **{c: [None] * n for c in ("prefix_ids", "prefix_block_tokens", "session_id", "turn", "think_s")},
        },
        schema=REQUEST_SCHEMA,
    )


def _check_workload_args(*, n_learning: int, n_stress: int, learning_gap_s: tuple[float, float],
                         stress_gap_s: tuple[float, float], phase_gap_s: float, tenants: tuple[str, ...],
                         priorities: Mapping[str, int], output_dists: Mapping[str, OutputLengthDist]) -> None:
    """Raise ValueError naming the first argument of :func:`driftsched_workload` that cannot make a workload."""
    if n_learning < 0 or n_stress < 0:
        raise ValueError("request counts must be >= 0")
    for name, (lo, hi) in (("learning_gap_s", learning_gap_s), ("stress_gap_s", stress_gap_s)):
        if not 0 <= lo <= hi:
            raise ValueError(f"{name} must satisfy 0 <= low <= high, got {(lo, hi)}")
    if phase_gap_s < 0:
        raise ValueError("phase_gap_s must be >= 0")
    if not tenants:
        raise ValueError("tenants must not be empty")
    missing = [t for t in tenants if t not in priorities]
    if missing:
        raise ValueError(f"no priority for tenants {missing}")
    missing = [j for j in JOB_TYPES if j not in output_dists]
    if missing:
        raise ValueError(f"no output length distribution for job types {missing}")


def _arrivals(rng: np.random.Generator, *, n_learning: int, n_stress: int, learning_gap_s: tuple[float, float],
              stress_gap_s: tuple[float, float], phase_gap_s: float, stress_start_s: float | None) -> np.ndarray:
    """Arrival times (s): the original sleeps before each submission; the pause sits between the phases."""
    learn_arrival = np.cumsum(rng.uniform(*learning_gap_s, n_learning))
    last_learning = float(learn_arrival[-1]) if n_learning else 0.0
    if stress_start_s is not None:
        start = max(float(stress_start_s), last_learning)
    else:
        start = last_learning + phase_gap_s if n_learning else 0.0
    return np.concatenate([learn_arrival, start + np.cumsum(rng.uniform(*stress_gap_s, n_stress))])

"""The fixed choices of ``driftsim`` options, as enums so that ``--help`` lists them and typos fail at parsing.

Kept here as plain names, not read from the library's registries, so that
``driftsim --help`` imports nothing heavy; ``tests/test_cli_conventions.py``
checks each against the registry it mirrors.
"""

from __future__ import annotations

from enum import Enum


class PolicyName(str, Enum):
    """Scheduling policies (:data:`driftsim.sim.policies.POLICIES`)."""

    fifo = "fifo"
    priority = "priority"
    sjf = "sjf"
    aging = "aging"
    edf = "edf"
    las = "las"
    srpt = "srpt"
    weighted = "weighted"
    vtc = "vtc"


class TraceFormat(str, Enum):
    """Trace file formats (:data:`driftsim.traces.loaders.FORMATS`); ``auto`` detects from the file."""

    auto = "auto"
    azure = "azure"
    burstgpt = "burstgpt"
    mooncake = "mooncake"
    bailian = "bailian"
    vidur = "vidur"
    native = "native"
    vllm_bench = "vllm-bench"
    guidellm = "guidellm"
    sharegpt = "sharegpt"


class EngineMode(str, Enum):
    """``continuous``: vLLM's iteration-level batching; ``microbatch``: DriftSched's worker."""

    continuous = "continuous"
    microbatch = "microbatch"


class RouterName(str, Enum):
    """How the gateway picks a replica (:data:`driftsim.sim.router.ROUTERS`)."""

    least_outstanding = "least_outstanding"
    round_robin = "round_robin"
    prefix_affinity = "prefix_affinity"


class Placement(str, Enum):
    """Where the policy acts: in front of the engine, or in its waiting queue."""

    gateway = "gateway"
    engine = "engine"


class Estimator(str, Enum):
    """Output-length estimates at admission (:data:`driftsim.admission.controller.ESTIMATORS`)."""

    oracle = "oracle"
    driftsched = "driftsched"
    learned = "learned"


class Counter(str, Enum):
    """Token counting for estimates."""

    tokenizer = "tokenizer"
    whitespace = "whitespace"


class Granularity(str, Enum):
    """Calibration bias key (:data:`driftsim.admission.calibration.GRANULARITIES`)."""

    category = "category"
    tenant = "tenant"
    tenant_category = "tenant_category"


def value(choice: Enum | None) -> str | None:
    """The plain string of a choice (None stays None: the scenario's value stands)."""
    return None if choice is None else str(choice.value)

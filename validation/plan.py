"""What one validation runs, built and checked before anything starts.

:class:`ValidationPlan` is every choice ``driftsim validate`` takes, as
values: the workload, the gateway, the profile, the engine
(:class:`ServerPlan`) and how the run goes. It refuses every bad
combination when it is built, with a :class:`driftsim.errors.ConfigError`
naming the ``driftsim validate`` flag, so that nothing is launched or
replayed for a run that cannot finish.
:func:`driftsim.validation.run.run_validation` takes it with the live client
and server.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from driftsim.errors import ConfigError
from driftsim.profiling.gateway import MicroBatch
from driftsim.profiling.secrets import redact
from driftsim.sim.client import ClientConfig
from driftsim.sim.config import GatewayConfig
from driftsim.sim.policies import POLICIES
from driftsim.validation.session import LEVELS, replays_dir
from driftsim.validation.workload import Workload

MODES = ("continuous", "microbatch")


@dataclass(frozen=True, kw_only=True)
class ServerPlan:
    """The engine validated against: a running ``endpoint``, or a server driftsim launches for the
    model folder ``launch`` (or the tiny test model) and stops afterwards."""

    endpoint: str | None = None
    launch: Path | None = None
    launch_tiny: bool = False
    engine_python: Path | None = None  # python with vllm for a launched server; None = this one
    served_model: str | None = None  # the model's name on the server; None = its first
    api_key_file: Path | None = None  # None = $DRIFTSIM_API_KEY, then $OPENAI_API_KEY
    max_num_seqs: int = 32  # the engine's limits: passed to a launched server, given for an endpoint
    max_num_batched_tokens: int = 1024
    max_model_len: int = 1024  # a launched server's; an endpoint's is read from /v1/models
    async_scheduling: bool = True  # a launched server's vLLM option (the CPU platform turns it off)
    pin: bool = True  # a launched CPU server: front end on one core, the model's threads on the others
    kv_cache_gib: int = 1  # a launched CPU server's VLLM_CPU_KVCACHE_SPACE, GiB
    server_args: tuple[str, ...] = ()  # more `vllm serve` arguments for a launched server
    num_gpu_blocks: int | None = None  # KV capacity, for servers whose /metrics does not publish it
    block_size: int | None = None

    @property
    def launches(self) -> bool:
        return self.launch is not None or self.launch_tiny

    def __post_init__(self) -> None:
        if sum((self.endpoint is not None, self.launch is not None, self.launch_tiny)) != 1:
            raise ConfigError("give exactly one of --endpoint URL, --launch MODEL_DIR or --launch-tiny")
        if self.server_args and self.endpoint is not None:
            raise ConfigError("--server-arg is passed to a server driftsim launches: use it with --launch or "
                              "--launch-tiny")
        if self.launch is not None and not Path(self.launch).is_dir():
            raise ConfigError(f"--launch {self.launch}: not a folder")
        for flag, x in (("--max-num-seqs", self.max_num_seqs), ("--max-num-batched-tokens", self.max_num_batched_tokens),
                        ("--max-model-len", self.max_model_len), ("--kv-cache-gib", self.kv_cache_gib)):
            if x < 1:
                raise ConfigError(f"{flag} must be >= 1, got {x}")


#: What ``--loads`` are fractions of: the calibrated simulator's capacity, or the profile's alone.
CAPACITY_FROM = ("calibration", "profile")


@dataclass(frozen=True, kw_only=True)
class ValidationPlan:
    """One validation: what is replayed, through which gateway, simulated with which profile, and how.

    ``trace`` None = the synthetic ``workload``; ``loads`` (fractions of the
    simulated capacity) make a sweep, None replays the trace at its own rate.
    ``out`` None: nothing is saved (the command always gives one).
    """

    server: ServerPlan | None = None  # None: the caller connects its own client (library use)
    profile: str | None = None  # name or TOML of the profile fitted on this engine
    # the workload
    trace: Path | None = None
    trace_format: str = "auto"
    tenants: dict[str, float] | None = None  # split a tenant-less trace by these weights
    max_requests: int | None = None
    workload: Workload = field(default_factory=Workload)
    loads: tuple[float, ...] | None = None
    # the gateway
    policy: str = "fifo"
    max_outstanding: int | None = None
    mode: str = "continuous"
    batch_size: int = 32
    batch_wait_s: float = 0.01
    # the run
    vocab_size: int | None = None  # prompt token ids are drawn below it; None = the launched model's, else 4000
    repeat: int = 1
    calibrate: bool = True
    # the capacity that loads are fractions of: the calibrated simulator's ("calibration": this server's, as
    # far as its calibration replay tells) or the profile's alone ("profile")
    capacity_from: str = "calibration"
    warmup: bool = True
    wait_quiet_s: float = 0.0
    overhead_s: float | None = None  # None = measured with 1-token requests
    timeout_s: float | None = 600.0  # per request, from its entry into the gateway
    retries: int = 0
    backoff_s: float = 1.0
    seed: int = 0
    out: Path | None = None
    resume: bool = False
    command: str = ""  # the command line, recorded in the results (secrets redacted)

    def __post_init__(self) -> None:
        if self.resume and self.out is None:
            raise ConfigError("--resume needs --out FOLDER: the folder of the validation to continue")
        if self.out is not None and not self.resume and (replays_dir(self.out) / LEVELS).exists():
            raise ConfigError(f"{self.out} already holds a validation: pass --resume to continue it, --rescore "
                              f"{self.out} to re-score it, or choose another --out")
        if self.server is not None and self.profile is None:  # a library caller gives the cost model itself
            raise ConfigError("--profile is required: the profile fitted on this engine (`driftsim fit` output)")
        if self.retries < 0 or not self.backoff_s >= 0:
            raise ConfigError(f"--retries must be >= 0 and --backoff-s >= 0, got {self.retries} and {self.backoff_s}")
        if self.repeat < 1:
            raise ConfigError(f"--repeat must be >= 1, got {self.repeat}")
        if self.capacity_from not in CAPACITY_FROM:
            raise ConfigError(f"--capacity-from: expected one of {', '.join(CAPACITY_FROM)}, got {self.capacity_from!r}")
        if self.workload.requests < 2:
            raise ConfigError(f"--requests must be >= 2, got {self.workload.requests}")
        if self.loads is not None and (not self.loads or any(not (math.isfinite(x) and x > 0) for x in self.loads)):
            raise ConfigError(f"--loads: every load must be a number > 0, got {','.join(map(str, self.loads))}")
        self._check_gateway()

    def _check_gateway(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"--mode: expected 'continuous' or 'microbatch', got {self.mode!r}")
        if self.mode == "microbatch" and self.max_outstanding is not None:
            raise ConfigError("--max-outstanding is for --mode continuous; the micro-batch worker takes --batch-size")
        if self.policy not in POLICIES:
            raise ConfigError(f"--policy: unknown policy {self.policy!r}; known: {', '.join(sorted(POLICIES))}")
        try:
            _ = (self.gateway, self.microbatch, self.client_config)  # built once now, so that their checks run now
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    @property
    def gateway(self) -> GatewayConfig:
        return GatewayConfig(policy=self.policy, max_outstanding=self.max_outstanding)

    @property
    def microbatch(self) -> MicroBatch | None:
        return MicroBatch(batch_size=self.batch_size, batch_wait_s=self.batch_wait_s) if self.mode == "microbatch" else None

    @property
    def launches(self) -> bool:
        """Whether driftsim starts the server (and stops it afterwards)."""
        return self.server is not None and self.server.launches

    @property
    def client_config(self) -> ClientConfig:
        """What the gateway does with a slow or failed request: the timeout, retries and backoff."""
        return ClientConfig(timeout_s=self.timeout_s, retries=self.retries, backoff_s=self.backoff_s)

    @property
    def journal_dir(self) -> Path | None:
        """Where the session's files go (:mod:`driftsim.validation.session`); None: nothing saved."""
        return None if self.out is None else replays_dir(self.out)

    def config_record(self) -> dict:
        """The run's configuration as the results record it (what re-scoring reads back)."""
        return {"profile": str(self.profile), "policy": self.policy, "max_outstanding": self.max_outstanding,
                "microbatch": None if self.mode != "microbatch" else {"batch_size": self.batch_size,
                                                                       "batch_wait_s": self.batch_wait_s},
                "trace": str(self.trace) if self.trace else "synthetic",
                "loads": None if self.loads is None else list(self.loads), "repeat": self.repeat, "seed": self.seed,
                "launched": self.launches, "pinned": self.launches and self.server.pin,
                "calibrate": self.calibrate, "capacity_from": self.capacity_from, "command": redact(self.command)}

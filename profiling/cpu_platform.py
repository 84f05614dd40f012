"""Launching a vLLM server on the CPU platform: what the platform overrides, and CPU pinning.

vLLM's CPU platform changes some launch options whatever the command line
says, and a CPU server's front end (API server, engine-core loop) competes
with the model's OpenMP threads for cores unless they are pinned apart, as
the profile's offline engine ran.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from driftsim.profiling import offline  # its functions called through the module, so tests can stand in for them


def launched_async(requested: bool) -> bool:
    """Whether a server launched with async scheduling ``requested`` runs with it: vLLM's CPU platform
    turns it off whatever the command line says (vllm/platforms/cpu.py, "not required on CPU")."""
    return requested and not offline.cpu_build()


def pin_cpus(python: str) -> tuple[str, dict[str, str], str] | None:
    """Pin a CPU server: ``(wrapper python, env, front-end CPUs)`` or None when not possible.

    The model's OpenMP threads get the CPUs :func:`driftsim.profiling.offline.cpu_bind_default`
    gives an engine (all but the first), everything else of the server (the
    API server, the engine-core loop, started through a ``taskset`` wrapper
    around ``python``) and this process get the first. On two cores: model on
    CPU 1, the rest on CPU 0.
    """
    if not offline.cpu_build() or shutil.which("taskset") is None or not hasattr(os, "sched_setaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    model_cpus = offline.cpu_bind_default()
    front = str(cpus[0])
    fd, path = tempfile.mkstemp(prefix="driftsim-pinned-python-", suffix=".sh")
    with os.fdopen(fd, "w") as f:
        f.write(f'#!/bin/sh\nexec taskset -c {front} "{python}" "$@"\n')
    os.chmod(path, 0o755)
    os.sched_setaffinity(0, {cpus[0]})
    return path, {"VLLM_CPU_OMP_THREADS_BIND": model_cpus}, front

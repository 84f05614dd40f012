"""The machine a real engine runs on: CPU other processes use meanwhile, and the host's load.

The real side's timings are only trustworthy on an otherwise idle machine;
:class:`ForeignCpu` measures the contention during each replay so that it
goes into the results beside it, and :func:`wait_for_quiet` waits for a
neighbour's burst to pass before one starts.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse


class ForeignCpu:
    """CPU time the host spent on *other* processes (not this one, not the server's process
    group) while a replay ran: the contention that distorts the real side's timings.

    ``server_pgid``: the server's process group (a launched server's pid); None = look for a
    local process serving ``port`` and take its group; not found = only this process is
    excluded (then the server's own CPU counts as foreign: read the number with that in mind).
    """

    def __init__(self, *, server_pgid: int | None = None, port: int | None = None) -> None:
        self._hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._ncpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        self.pgid = server_pgid if server_pgid is not None else self._find_pgid(port)
        self._t = self._host = self._ours = math.nan

    @staticmethod
    def _find_pgid(port: int | None) -> int | None:
        if port is None:
            return None
        needle = f"--port\x00{port}".encode()
        for d in Path("/proc").glob("[0-9]*"):
            try:
                if needle in (d / "cmdline").read_bytes():
                    return os.getpgid(int(d.name))
            except (OSError, ValueError):
                continue
        return None

    def _host_cpu(self) -> tuple[float, float, float]:
        """(user + nice + system, irq + softirq, steal) of the whole host so far, s."""
        with open("/proc/stat", "rb") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        v += [0] * (8 - len(v))
        return (v[0] + v[1] + v[2]) / self._hz, (v[5] + v[6]) / self._hz, v[7] / self._hz

    def _our_cpu(self) -> float:
        me = os.getpid()
        total = 0.0
        for d in Path("/proc").glob("[0-9]*"):
            try:
                raw = (d / "stat").read_bytes()
                rest = raw[raw.rindex(b")") + 2:].split()
                pid, pgrp = int(d.name), int(rest[2])
                if pid == me or (self.pgid is not None and pgrp == self.pgid):
                    total += (int(rest[11]) + int(rest[12])) / self._hz
            except (OSError, ValueError, IndexError):
                continue
        return total

    def start(self) -> None:
        try:
            self._t, self._host, self._ours = time.perf_counter(), self._host_cpu(), self._our_cpu()
        except (OSError, ValueError, IndexError):
            self._t = math.nan

    def stop(self) -> dict:
        """CPU seconds others used (``foreign_cpu_s``) and that as a share of the machine
        (``foreign_share``); also the kernel's interrupt work (``irq_share``: mostly our own
        loopback traffic) and the time the hypervisor gave our CPUs to someone else
        (``steal_share``: contention from outside this machine), as shares."""
        nan = {"foreign_cpu_s": math.nan, "foreign_share": math.nan, "irq_share": math.nan,
               "steal_share": math.nan, "server_pgid": self.pgid}
        try:
            dt = time.perf_counter() - self._t
            host, irq, steal = self._host_cpu()
            foreign = max(0.0, (host - self._host[0]) - (self._our_cpu() - self._ours))
        except (OSError, ValueError, IndexError, TypeError):
            return nan
        if not dt > 0:
            return nan
        cap = dt * self._ncpu
        return {"foreign_cpu_s": foreign, "foreign_share": foreign / cap, "irq_share": (irq - self._host[1]) / cap,
                "steal_share": (steal - self._host[2]) / cap, "server_pgid": self.pgid}


#: A replay during which other processes used more than this share of the CPU is flagged.
CONTENDED_SHARE = 0.10


def wait_for_quiet(meter: "ForeignCpu", *, max_wait_s: float, window_s: float = 2.0,
                   say: Callable[[str], None] | None = None) -> float:
    """Wait (up to ``max_wait_s``) until other processes use under ``CONTENDED_SHARE / 2`` of the CPU
    for two windows in a row; return the seconds waited. On a shared machine this keeps a
    neighbour's burst out of the real side's timings."""
    t0 = time.perf_counter()
    calm = 0
    while time.perf_counter() - t0 < max_wait_s:
        meter.start()
        time.sleep(window_s)
        share = meter.stop()["foreign_share"]
        calm = calm + 1 if not share > CONTENDED_SHARE / 2 else 0
        if calm >= 2:
            break
        if say is not None and calm == 0:
            say(f"waiting for the machine to quieten (other processes use {100 * share:.0f} % of the CPU)")
    return time.perf_counter() - t0


def url_port(url: str) -> int | None:
    """The port of ``url`` (None where it names none or is malformed): finds a local server's process."""
    try:
        return urlparse(url).port
    except ValueError:
        return None


def host_load() -> float:
    """The host's 1-minute load average (NaN where unknown). The real side's timings are only
    trustworthy on an otherwise idle machine: this goes into the results beside each replay."""
    try:
        return float(open("/proc/loadavg").read().split()[0])
    except (OSError, ValueError, IndexError):
        return math.nan

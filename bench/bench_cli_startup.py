"""Start-up time of the command line: the median wall time of ``driftsim --help`` over several runs.

What a user waits for before any command does anything. The target is
under 0.25 s; the library (polars, numpy, the simulation kernel) must not
be imported to print help.

    python bench/bench_cli_startup.py              # 15 runs of `driftsim --help`
    python bench/bench_cli_startup.py --runs 30 --args "simulate --help"
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import subprocess
import sys
import time


def wall_times(args: list[str], runs: int) -> list[float]:
    """Wall seconds of ``python -m driftsim ARGS`` (output discarded), one per run, after one warm-up run."""
    cmd = [sys.executable, "-m", "driftsim", *args]
    subprocess.run(cmd, stdout=subprocess.DEVNULL, check=True)  # warm the file cache
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--args", default="--help", help="driftsim arguments to time (default: --help)")
    opts = ap.parse_args()
    times = wall_times(shlex.split(opts.args), opts.runs)
    print(f"driftsim {opts.args}: median {statistics.median(times):.3f} s, min {min(times):.3f} s, "
          f"max {max(times):.3f} s over {opts.runs} runs")  # fmt: skip


if __name__ == "__main__":
    main()

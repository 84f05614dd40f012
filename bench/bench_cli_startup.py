"""Start-up time of the command line: the median wall time of ``driftsim --help`` over several runs.

What a user waits for before any command does anything: the whole
process, from exec of the ``driftsim`` entry point to exit. Help must not
import the library's heavy dependencies; the last line names any of
:data:`HEAVY` that a ``--help`` loaded (``python -X importtime``).

    python bench/bench_cli_startup.py                       # 10 runs of `driftsim --help`
    python bench/bench_cli_startup.py --runs 30 --args "simulate --help"
"""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

#: Modules that ``driftsim --help`` and ``driftsim simulate --help`` must not import.
HEAVY = ("polars", "numpy", "pyarrow", "simpy", "plotly", "markdown_it", "pygments")


def driftsim_command() -> list[str]:
    """The ``driftsim`` entry point beside this Python (a venv's bin), else ``python -m driftsim``."""
    beside = Path(sys.executable).with_name("driftsim")
    found = str(beside) if beside.exists() else shutil.which("driftsim")
    return [found] if found else [sys.executable, "-m", "driftsim"]


def wall_times(args: list[str], runs: int) -> list[float]:
    """Wall seconds of ``driftsim ARGS`` (output discarded), one per run, after one warm-up run."""
    cmd = [*driftsim_command(), *args]
    subprocess.run(cmd, stdout=subprocess.DEVNULL, check=True)  # warm the file cache
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - t0)
    return times


def heavy_imports(args: list[str]) -> list[str]:
    """The modules of :data:`HEAVY` that ``python -X importtime -m driftsim ARGS`` imported."""
    res = subprocess.run([sys.executable, "-X", "importtime", "-m", "driftsim", *args], capture_output=True, text=True,
                         check=True)  # fmt: skip
    loaded = {m.group(1) for m in re.finditer(r"\|\s+([\w.]+)\s*$", res.stderr, re.MULTILINE)}
    return [m for m in HEAVY if m in loaded]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--args", default="--help", help="driftsim arguments to time (default: --help)")
    opts = ap.parse_args()
    args = shlex.split(opts.args)
    times = wall_times(args, opts.runs)
    print(f"{' '.join(driftsim_command())} {opts.args}: median {statistics.median(times):.3f} s, "
          f"min {min(times):.3f} s, max {max(times):.3f} s over {opts.runs} runs")  # fmt: skip
    heavy = heavy_imports(args)
    print(f"heavy modules imported: {', '.join(heavy) if heavy else 'none'} (checked: {', '.join(HEAVY)})")


if __name__ == "__main__":
    main()

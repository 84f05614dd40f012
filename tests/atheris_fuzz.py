"""Coverage-guided fuzzing of the trace loaders and the scenario reader with atheris (optional, run by hand).

The same properties as tests/test_fuzz_traces.py and tests/test_fuzz_scenario.py
(a valid table or a TraceError naming the file; a scenario or a ConfigError
naming it), driven by libFuzzer's mutations instead of hypothesis' strategies.
Coverage guides the scenario reader's inputs only: atheris' comparison hooks
break polars' overloaded operators, so the loaders run uninstrumented (plain
mutation), and polars' own parsers are native code it cannot see. It
complements rather than replaces the hypothesis tests.
Not part of CI; atheris is not a dependency:

    .venv/bin/pip install atheris==3.0.0   # a binary wheel for CPython 3.11 on Linux x86-64
    .venv/bin/python -m tests.atheris_fuzz -atheris_runs=20000 -max_len=4096 CORPUS_DIR

The first input byte picks the target (a format and file name); the rest is
the file's content. An empty CORPUS_DIR is first seeded with one small valid
file per target, so mutations start from real structure. It prints how many
inputs each target tried.
"""

from __future__ import annotations

import atexit
import sys
import tempfile
from collections import Counter
from pathlib import Path

import atheris

# Coverage for the scenario reader and TOML parser only: atheris' comparison hooks turn polars'
# `series == value` into a plain bool, which breaks the loaders' expressions, so they run uninstrumented.
with atheris.instrument_imports(include=["driftsim.sim.scenario", "tomllib"]):
    from driftsim.sim.scenario import load_scenario  # noqa: F401

from tests.test_fuzz_scenario import check_scenario_file  # noqa: E402
from tests.test_fuzz_traces import check_load  # noqa: E402

TARGETS = [
    ("auto", ".csv"), ("auto", ".jsonl"), ("auto", ".parquet"), ("auto", ".txt"), ("azure", ".csv"),
    ("burstgpt", ".csv"), ("mooncake", ".jsonl"), ("bailian", ".jsonl"), ("vidur", ".csv"), ("native", ".csv"),
    ("scenario", ".toml"),
]  # fmt: skip
TRIED: Counter[str] = Counter()
WORKDIR = Path(tempfile.mkdtemp(prefix="driftsim-atheris-"))


def write_seeds(corpus: Path) -> None:
    """One valid input per target: the target's index byte, then a small valid file."""
    root = Path(__file__).resolve().parent.parent
    azure = b"".join((root / "traces" / "data" / "azure2023_code.csv").read_bytes().splitlines(keepends=True)[:6])
    texts = {
        ".csv": azure,
        ".jsonl": b"".join(b'{"chat_id": %d, "timestamp": 0.5, "input_length": 10, "output_length": 3}\n' % i
                           for i in range(2)),
        ".txt": b"arrived_at,num_prefill_tokens,num_decode_tokens\n0.0,10,3\n0.5,20,4\n",
        ".toml": (root / "sim" / "scenarios" / "driftsched.toml").read_bytes(),
    }
    for i, (fmt, ext) in enumerate(TARGETS):
        body = {
            "burstgpt": b"Timestamp,Model,Request tokens,Response tokens\n5,ChatGPT,472,18\n45,GPT-4,10,0\n",
            "vidur": texts[".txt"],
            "native": b"request_id,arrival_s,tenant,input_tokens,output_tokens\n0,0.0,gold,5,2\n1,0.5,free,6,3\n",
        }.get(fmt, texts.get(ext, b""))
        if ext == ".parquet":
            continue  # binary; libFuzzer reaches its header checks from the others
        (corpus / f"seed-{i}-{fmt}{ext}").write_bytes(bytes([i]) + body)


def one_input(data: bytes) -> None:
    if not data:
        return
    fmt, ext = TARGETS[data[0] % len(TARGETS)]
    path = WORKDIR / f"input{ext}"
    path.write_bytes(data[1:])
    outcome = check_scenario_file(path) if fmt == "scenario" else check_load(path, fmt)
    TRIED[f"{fmt}{ext}:{outcome}"] += 1


@atexit.register
def _print_counts() -> None:
    width = max((len(k) for k in TRIED), default=0)
    for key in sorted(TRIED):
        print(f"{key:<{width}}  {TRIED[key]:>8}", file=sys.stderr)
    print(f"{'total':<{width}}  {sum(TRIED.values()):>8}", file=sys.stderr)


if __name__ == "__main__":
    dirs = [Path(a) for a in sys.argv[1:] if not a.startswith("-")]
    if dirs and dirs[0].is_dir() and not any(dirs[0].iterdir()):
        write_seeds(dirs[0])
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()

"""Shared budget, settings and bookkeeping for the fuzz tests (tests/test_fuzz_*.py).

Two budgets: CI runs a short, derandomized one (same inputs every run), and
``DRIFTSIM_FUZZ_EXAMPLES=5000 pytest -m fuzz`` a long, random one. Each test
body calls :func:`tried` once per input, and ``tests/conftest.py`` prints the
counts at the end of the run, so a report says how many inputs were tried.
tests/atheris_fuzz.py drives the same properties with atheris, by hand.
"""

from __future__ import annotations

import faulthandler
import os
from collections import Counter
from contextlib import contextmanager
from datetime import timedelta

from hypothesis import HealthCheck, settings

#: examples per fuzz target: the env value for a long run, else the CI default
LONG_EXAMPLES = int(os.environ.get("DRIFTSIM_FUZZ_EXAMPLES", "0") or 0)
CI_EXAMPLES = 60
#: the slowest one input may take before the run counts it a hang (a real one aborts the process, see no_hang)
PER_INPUT_S = 10.0

_SUPPRESS = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large]
settings.register_profile(
    "driftsim-fuzz-ci",
    max_examples=CI_EXAMPLES,
    derandomize=True,  # the same inputs on every CI run
    database=None,
    deadline=timedelta(seconds=PER_INPUT_S),
    suppress_health_check=_SUPPRESS,
)
settings.register_profile(
    "driftsim-fuzz-long",
    max_examples=max(LONG_EXAMPLES, 1),
    derandomize=False,  # fresh random inputs; a failure prints its reproduction blob
    deadline=timedelta(seconds=PER_INPUT_S),
    suppress_health_check=_SUPPRESS,
    print_blob=True,
)
PROFILE = "driftsim-fuzz-long" if LONG_EXAMPLES else "driftsim-fuzz-ci"


def fuzz_settings(**overrides) -> settings:
    """The run's fuzz profile (CI or long), with per-test overrides."""
    return settings(settings.get_profile(PROFILE), **overrides)


#: fuzz target -> inputs tried in this process (printed by conftest.pytest_terminal_summary)
TRIED: Counter[str] = Counter()
#: fuzz target -> outcome -> count ("loaded", "error", ...), printed beside TRIED
OUTCOMES: dict[str, Counter[str]] = {}


def tried(target: str, outcome: str) -> None:
    TRIED[target] += 1
    OUTCOMES.setdefault(target, Counter())[outcome] += 1


@contextmanager
def no_hang(seconds: float = 6 * PER_INPUT_S):
    """Abort the whole test process with every thread's traceback if the body runs past `seconds`.

    Hypothesis's deadline only fires after an input returns; an input that
    never returns (a loop in native code too) would stall CI, so this is the
    backstop: a hang becomes a loud failure with a traceback.
    """
    faulthandler.dump_traceback_later(seconds, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()

"""Suite-wide pytest hooks."""

from __future__ import annotations

import os

import pytest

# In CI (CI=true, as CI runs .ci/run) or with DRIFTSIM_STRICT=1 nothing may skip or xfail quietly;
# DRIFTSIM_STRICT=0 turns it off.
STRICT = os.environ.get("DRIFTSIM_STRICT", "1" if os.environ.get("CI") == "true" else "0") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under strict mode a skipped test (vLLM, Chromium or Ray missing...) or an xfail is a failure.

    A missing engine or browser on the CI machine is a broken set-up, not a reason to report green.
    """
    outcome = yield
    report = outcome.get_result()
    if not STRICT:
        return
    if report.skipped:
        reason = getattr(report, "wasxfail", None)
        what = f"expected to fail ({reason})" if reason is not None else f"skipped ({report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr})"
        report.outcome = "failed"
        report.longrepr = f"DRIFTSIM_STRICT=1: {item.nodeid} was {what}; in CI every test must run and pass"


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Print how many inputs each fuzz target tried (tests/fuzzing.py counts them), so a run states its coverage."""
    import sys

    fuzzing = sys.modules.get("tests.fuzzing")
    if fuzzing is None or not fuzzing.TRIED:
        return
    tr = terminalreporter
    budget = f"long run, {fuzzing.LONG_EXAMPLES} per target" if fuzzing.LONG_EXAMPLES else (
        f"CI budget, {fuzzing.CI_EXAMPLES} per target, derandomized")
    tr.write_sep("-", f"fuzz inputs tried ({budget})")
    width = max(len(t) for t in fuzzing.TRIED)
    for target in sorted(fuzzing.TRIED):
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(fuzzing.OUTCOMES[target].items()))
        tr.write_line(f"{target:<{width}}  {fuzzing.TRIED[target]:>7}  ({outcomes})")
    tr.write_line(f"{'total':<{width}}  {sum(fuzzing.TRIED.values()):>7}")

"""Suite-wide pytest hooks."""

from __future__ import annotations


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

"""Strict mode (DRIFTSIM_STRICT=1, or CI=true as when CI runs .ci/run) turns every skip and xfail into a failure, so CI cannot go green on a
machine where vLLM or Chromium is missing."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

_CASES = '''
import pytest

def test_skipped():
    pytest.skip("vllm is not installed")

@pytest.mark.skipif(True, reason="chromium is not installed")
def test_skipped_by_mark():
    pass

@pytest.mark.xfail(strict=False, reason="noisy")
def test_expected_to_fail():
    assert False

def test_passes():
    pass
'''


def _run(pytester, monkeypatch, strict: str | None):
    pytester.makeconftest((Path(__file__).parent / "conftest.py").read_text())
    pytester.makepyfile(test_cases=_CASES)
    monkeypatch.delenv("DRIFTSIM_STRICT", raising=False)
    monkeypatch.delenv("CI", raising=False)
    if strict == "CI":
        monkeypatch.setenv("CI", "true")
    elif strict is not None:
        monkeypatch.setenv("DRIFTSIM_STRICT", strict)
    return pytester.runpytest_subprocess("-p", "no:cacheprovider")


@pytest.mark.parametrize("strict", ["1", "CI"])
def test_strict_mode_fails_skips_and_xfails(pytester, monkeypatch, strict):
    result = _run(pytester, monkeypatch, strict)
    result.assert_outcomes(failed=2, errors=1, passed=1)  # a skipif mark skips in set-up: an error
    result.stdout.fnmatch_lines(["*DRIFTSIM_STRICT=1*test_skipped*vllm is not installed*"])


def test_without_strict_mode_skips_stay_skips(pytester, monkeypatch):
    result = _run(pytester, monkeypatch, None)
    result.assert_outcomes(skipped=2, xfailed=1, passed=1)

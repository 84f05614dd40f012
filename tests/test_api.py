"""The public Python API at ``driftsim`` level: the names docs/simulator.md shows, the version, a lazy import."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import driftsim

CONV = Path(__file__).resolve().parent.parent / "traces" / "data" / "azure2023_conv.csv"


def test_version_is_the_installed_distributions():
    assert driftsim.__version__ == importlib.metadata.version("driftsim")


def test_every_public_name_resolves():
    for name in driftsim.__all__:
        assert getattr(driftsim, name) is not None, name


def test_import_driftsim_loads_neither_polars_nor_numpy():
    code = "import sys, driftsim; print('polars' in sys.modules, 'numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_the_readme_example_simulates_every_request_of_the_trace():
    trace = driftsim.load_trace(CONV).head(300)
    trace = driftsim.assign_tenants(trace, {"chat": 2, "batch": 1}, seed=0)
    profile = driftsim.load_profile("a100-llama-3.1-8b")
    result = driftsim.simulate(trace, cost=profile.cost_model,
                               engine=driftsim.EngineConfig(mode="continuous", max_num_seqs=128),
                               gateway=driftsim.GatewayConfig(policy="priority", max_outstanding=64))
    assert result.requests.height == 300
    assert sorted(result.summary["tenants"]) == ["batch", "chat"]
    assert result.summary["overall"]["requests"] == 300
    assert set(result.requests["tenant"].unique()) == {"chat", "batch"}


def test_an_unknown_name_is_an_attribute_error():
    try:
        driftsim.no_such_thing  # noqa: B018
    except AttributeError as exc:
        assert "no_such_thing" in str(exc)
    else:
        raise AssertionError("expected AttributeError")

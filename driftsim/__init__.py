"""driftsim: a discrete-event simulator of multi-tenant LLM inference on GPUs.

The Python API, in a few lines::

    import driftsim

    trace = driftsim.load_trace("traces/data/azure2023_conv.csv")       # any supported format
    trace = driftsim.assign_tenants(trace, {"chat": 2, "batch": 1}, seed=0)
    profile = driftsim.load_profile("a100-llama-3.1-8b")              # a bundled GPU x model profile
    engine = driftsim.EngineConfig(mode="continuous", max_num_seqs=128)
    result = driftsim.simulate(trace, cost=profile.cost_model, engine=engine,
                               gateway=driftsim.GatewayConfig(policy="priority", max_outstanding=64))
    print(result.summary["tenants"])                                  # per-tenant latency and SLOs
    result.requests                                                   # one row per request (polars)

or from a scenario file: ``result, _ = driftsim.run_scenario(driftsim.load_scenario("my.toml"))``.

The packages, bottom to top (each imports only the ones before it): ``traces``
(request tables), ``costmodel`` (step times), ``admission`` (DriftSched's
length estimation), ``sim`` (the simulation kernel), ``profiling`` (real vLLM
engines), ``validation``, ``capacity`` and ``experiments``, then ``cli``.
"""

from __future__ import annotations

import importlib

__version__ = "0.2.0"

#: public name -> module that defines it. NOTE: loaded on first use, so that
#: ``import driftsim`` (and ``driftsim --help``) does not pay for polars and numpy.
_API = {
    "load_trace": "driftsim.traces.loaders",
    "assign_tenants": "driftsim.traces.transform",
    "load_profile": "driftsim.costmodel.profiles",
    "EngineConfig": "driftsim.sim.config",
    "GatewayConfig": "driftsim.sim.config",
    "AdmissionConfig": "driftsim.admission.controller",
    "ClientConfig": "driftsim.sim.client",
    "simulate": "driftsim.sim.run",
    "SimResult": "driftsim.sim.run",
    "load_scenario": "driftsim.sim.scenario",
    "run_scenario": "driftsim.sim.scenario",
    "ConfigError": "driftsim.errors",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'driftsim' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)

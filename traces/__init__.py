"""Request traces: load public formats into the one request table, reshape, synthesise, inspect, write.

    df = load_trace("traces/data/azure2023_code.csv")           # any supported format, auto-detected
    df = assign_tenants(df, {"gold": 1, "free": 3}, seed=0)   # then scale_rate, clip_duration, set_slos, ...
    write_trace(df, "out/scenario.parquet")

The table's columns are in driftsim.traces.schema.REQUEST_SCHEMA.
"""

from driftsim.traces.bench_workload import BenchWorkload, generate_bench
from driftsim.traces.inspect import inspect_trace
from driftsim.traces.loaders import (
    FORMATS,
    LoadReport,
    detect_format,
    load_trace,
    load_trace_with_report,
    read_azure,
    read_bailian,
    read_burstgpt,
    read_mooncake,
    read_native,
    read_vidur,
)
from driftsim.traces.schema import (
    OPTIONAL_COLUMNS,
    REQUEST_SCHEMA,
    REQUIRED_COLUMNS,
    TraceError,
    empty_trace,
    validate_trace,
)
from driftsim.traces.synth import LengthDist, TenantLoad, generate, lengths_from_trace
from driftsim.traces.transform import (
    assign_tenants,
    clip_duration,
    head,
    parse_tenant_weights,
    scale_rate,
    set_priorities,
    set_slos,
)
from driftsim.traces.writer import write_trace

__all__ = [
    "BenchWorkload",
    "FORMATS",
    "OPTIONAL_COLUMNS",
    "REQUEST_SCHEMA",
    "REQUIRED_COLUMNS",
    "LengthDist",
    "LoadReport",
    "TenantLoad",
    "TraceError",
    "assign_tenants",
    "clip_duration",
    "detect_format",
    "empty_trace",
    "generate",
    "generate_bench",
    "head",
    "inspect_trace",
    "lengths_from_trace",
    "load_trace",
    "load_trace_with_report",
    "parse_tenant_weights",
    "read_azure",
    "read_bailian",
    "read_burstgpt",
    "read_mooncake",
    "read_native",
    "read_vidur",
    "scale_rate",
    "set_priorities",
    "set_slos",
    "validate_trace",
    "write_trace",
]

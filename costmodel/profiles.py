"""Hardware profiles: a GPU x a model x a cost model with its parameters, read
from TOML files, with where every number came from.

A profile file (see the bundled ones in ``costmodel/profiles/``)::

    name = "l4-qwen1.5-1.8b-chat"          # optional, defaults to the file stem
    description = "..."                     # optional

    [gpu]               # GpuSpec fields
    [model]             # ModelArch fields (head_dim optional)
    [cost_model]        # kind = "linear" | "roofline" | "token-table", then that kind's parameters
                        # (linear: optionally a decode table, decode_seq_knots =
                        # [ints] with decode_seq_cost_s = [seconds]; see
                        # LinearCostModel)
    [kv]                # optional: activation_reserve_bytes; a measured
                        # num_gpu_blocks with num_gpu_blocks_block_size
                        # (and num_gpu_blocks_utilization if it differs
                        # from engine_defaults.gpu_memory_utilization)
    [engine_defaults]   # block_size, max_num_seqs, max_num_batched_tokens,
                        # max_model_len, gpu_memory_utilization (+ free extras;
                        # those named like EngineConfig fields, e.g.
                        # async_scheduling, reach the engine)
    [provenance]        # source = "derived-from-spec" | "measured" | "measured-kernels"
                        # | "transferred-kernels", notes,
                        # date, spec_sources = [...] (+ free extras)

Every problem is reported as a :class:`ProfileError` naming the file and the
key (``path: [table].key: problem``).
"""

from __future__ import annotations

import datetime as _dt
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from driftsim.costmodel.base import CostModel
from driftsim.costmodel.hardware import GpuSpec, ModelArch
from driftsim.costmodel.kv import KvCapacity
from driftsim.costmodel.linear import LinearCostModel
from driftsim.costmodel.roofline import RooflineCostModel
from driftsim.costmodel.tokentable import TokenTableCostModel

PROFILE_DIR = Path(__file__).parent / "profiles"
KINDS = ("linear", "roofline", "token-table")
SOURCES = ("derived-from-spec", "measured", "measured-kernels", "transferred-kernels")


class ProfileError(ValueError):
    """A profile file is missing, unreadable or invalid."""


@dataclass(frozen=True)
class Profile:
    """A loaded profile. ``cost_model`` is ready to use; ``engine_defaults``
    holds the engine settings the numbers assume."""

    name: str
    cost_model: CostModel
    gpu: GpuSpec
    model: ModelArch
    provenance: dict
    engine_defaults: dict
    description: str = ""
    path: Path | None = field(default=None, compare=False)

    def kv_capacity_blocks(self, block_size: int | None = None,
                           gpu_memory_utilization: float | None = None) -> int:
        """KV blocks at this block size and utilisation (defaults: the
        profile's engine defaults). A measured ``num_gpu_blocks`` wins when
        present (see :class:`driftsim.costmodel.kv.KvCapacity`)."""
        if block_size is None:
            block_size = self.engine_defaults["block_size"]
        if gpu_memory_utilization is None:
            gpu_memory_utilization = self.engine_defaults["gpu_memory_utilization"]
        return self.cost_model.kv.blocks(block_size, gpu_memory_utilization)  # type: ignore[attr-defined]

    def describe(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "gpu": self.gpu.name,
            "model": self.model.name,
            "cost_model": self.cost_model.describe(),
            "engine_defaults": dict(self.engine_defaults),
            "provenance": dict(self.provenance),
        }


def list_profiles() -> list[str]:
    """Names of the bundled profiles, sorted."""
    return sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))


def load_profile(name_or_path: str | Path) -> Profile:
    """Load a bundled profile by name, or any profile file by path."""
    path = _resolve(name_or_path)
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"{path}: not valid TOML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ProfileError(f"{path}: not UTF-8 text (byte {exc.start}); a profile is a TOML file") from None
    except RecursionError:
        raise ProfileError(f"{path}: nested too deeply to be a profile") from None
    return _build(path, data)


def _resolve(name_or_path: str | Path) -> Path:
    text = str(name_or_path)
    if isinstance(name_or_path, Path) or text.endswith(".toml") or "/" in text or "\\" in text:
        path = Path(name_or_path)
        if path.is_dir():
            raise ProfileError(f"{path}: is a folder, expected a profile TOML file")
        if not path.is_file():
            raise ProfileError(f"{path}: profile file not found")
        return path
    path = PROFILE_DIR / f"{text}.toml"
    if not path.is_file():
        raise ProfileError(f"unknown profile {text!r}; bundled profiles: {', '.join(list_profiles())}")
    return path


# ---- reading fields ------------------------------------------------------

class _Table:
    """One TOML table plus the file and table name for error messages."""

    def __init__(self, path: Path, name: str, data: Any) -> None:
        self.path, self.name = path, name
        if not isinstance(data, dict):
            raise ProfileError(f"{path}: [{name}] must be a table")
        self.data = data

    def error(self, key: str, problem: str) -> ProfileError:
        return ProfileError(f"{self.path}: [{self.name}].{key}: {problem}")

    def has(self, key: str) -> bool:
        return key in self.data

    def _raw(self, key: str) -> Any:
        if key not in self.data:
            raise self.error(key, "missing")
        return self.data[key]

    def string(self, key: str, default: str | None = None) -> str:
        if default is not None and key not in self.data:
            return default
        value = self._raw(key)
        if not isinstance(value, str):
            raise self.error(key, f"expected a string, got {value!r}")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            raise self.error(key, f"expected true or false, got {value!r}")
        return value

    def integer(self, key: str, *, minimum: int = 1, default: int | None = None) -> int:
        if default is not None and key not in self.data:
            return default
        value = self._raw(key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"expected an integer, got {value!r}")
        if value < minimum:
            raise self.error(key, f"must be >= {minimum}, got {value!r}")
        return value

    def number(self, key: str, *, positive: bool = False, at_most: float | None = None,
               default: float | None = None) -> float:
        if default is not None and key not in self.data:
            return default
        value = self._raw(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.error(key, f"expected a finite number, got {value!r}")
        if value < 0 or (positive and value == 0):
            raise self.error(key, f"must be {'> 0' if positive else '>= 0'}, got {value!r}")
        if at_most is not None and value > at_most:
            raise self.error(key, f"must be <= {at_most}, got {value!r}")
        return float(value)

    def no_unknown(self, known: tuple[str, ...]) -> None:
        for key in self.data:
            if key not in known:
                raise self.error(key, f"unknown key; expected one of {', '.join(known)}")


def _table(path: Path, data: dict, name: str, *, required: bool = True) -> _Table:
    if name not in data:
        if required:
            raise ProfileError(f"{path}: [{name}]: missing table")
        return _Table(path, name, {})
    return _Table(path, name, data[name])


_GPU_KEYS = ("name", "peak_flops", "mem_bandwidth", "mem_bytes")
_MODEL_KEYS = ("name", "num_layers", "hidden_size", "num_heads", "num_kv_heads", "intermediate_size",
               "vocab_size", "dtype_bytes", "tied_embeddings", "qkv_bias", "head_dim")
_KV_KEYS = ("activation_reserve_bytes", "num_gpu_blocks", "num_gpu_blocks_block_size",
            "num_gpu_blocks_utilization")
_LINEAR_KEYS = ("kind", "overhead_s", "per_prefill_token_s", "per_prefill_attn_s", "per_prefill_seq_s",
                "per_decode_seq_s", "per_decode_ctx_token_s")
_DECODE_TABLE_KEYS = ("decode_seq_knots", "decode_seq_cost_s")
_ROOFLINE_KEYS = ("kind", "compute_efficiency", "memory_efficiency", "overhead_s", "per_seq_overhead_s",
                  "prefill_query_tile")
_TOKEN_TABLE_KEYS = ("kind", "overhead_s", "per_token_s", "per_prefill_attn_s", "per_prefill_seq_s",
                     "per_prefill_step_s", "per_decode_seq_s", "per_decode_step_s", "per_decode_ctx_token_s",
                     "token_knots", "token_cost_s")
_TOP_KEYS = ("name", "description", "gpu", "model", "cost_model", "kv", "engine_defaults", "provenance")


def _gpu(t: _Table) -> GpuSpec:
    t.no_unknown(_GPU_KEYS)
    return GpuSpec(name=t.string("name"), peak_flops=t.number("peak_flops", positive=True),
                   mem_bandwidth=t.number("mem_bandwidth", positive=True), mem_bytes=t.integer("mem_bytes"))


def _model(t: _Table) -> ModelArch:
    t.no_unknown(_MODEL_KEYS)
    kwargs = {key: t.integer(key) for key in _MODEL_KEYS[1:8]}
    head_dim = t.integer("head_dim") if t.has("head_dim") else None
    try:
        return ModelArch(name=t.string("name"), **kwargs, tied_embeddings=t.boolean("tied_embeddings", False),
                         qkv_bias=t.boolean("qkv_bias", False), head_dim_override=head_dim)
    except ValueError as exc:
        raise ProfileError(f"{t.path}: [model]: {exc}") from exc


def _engine_defaults(t: _Table) -> dict:
    out = dict(t.data)
    for key in ("block_size", "max_num_seqs", "max_num_batched_tokens", "max_model_len"):
        out[key] = t.integer(key)
    out["gpu_memory_utilization"] = t.number("gpu_memory_utilization", positive=True, at_most=1.0)
    return out


def _provenance(t: _Table) -> dict:
    out = dict(t.data)
    source = t.string("source")
    if source not in SOURCES:
        raise t.error("source", f"expected one of {', '.join(SOURCES)}, got {source!r}")
    t.string("notes")
    date = t._raw("date")
    if isinstance(date, (_dt.date, _dt.datetime)):
        out["date"] = date.isoformat()
    elif not isinstance(date, str):
        raise t.error("date", f"expected a date, got {date!r}")
    sources = t._raw("spec_sources")
    if not isinstance(sources, list) or not all(isinstance(s, str) for s in sources):
        raise t.error("spec_sources", f"expected a list of strings, got {sources!r}")
    out["spec_sources"] = list(sources)
    return out


def _kv(t: _Table, gpu: GpuSpec, model: ModelArch, utilization: float) -> KvCapacity:
    t.no_unknown(_KV_KEYS)
    reserve = t.integer("activation_reserve_bytes", minimum=0, default=0)
    if not t.has("num_gpu_blocks"):
        for key in ("num_gpu_blocks_block_size", "num_gpu_blocks_utilization"):
            if t.has(key):
                raise t.error(key, "given without num_gpu_blocks")
        return KvCapacity(gpu=gpu, model=model, gpu_memory_utilization=utilization,
                          activation_reserve_bytes=reserve)
    blocks = t.integer("num_gpu_blocks")
    block_size = t.integer("num_gpu_blocks_block_size")
    measured_util = t.number("num_gpu_blocks_utilization", positive=True, at_most=1.0, default=utilization)
    return KvCapacity(gpu=gpu, model=model, gpu_memory_utilization=measured_util,
                      activation_reserve_bytes=reserve, num_gpu_blocks=blocks, measured_block_size=block_size)


def _cost_model(t: _Table, gpu: GpuSpec, model: ModelArch, kv: KvCapacity, name: str,
                provenance: dict) -> CostModel:
    kind = t.string("kind")
    if kind == "linear":
        t.no_unknown(_LINEAR_KEYS + _DECODE_TABLE_KEYS)
        coeffs = {key: t.number(key, default=0.0 if key != "overhead_s" else None)
                  for key in _LINEAR_KEYS[1:]}
        if coeffs["overhead_s"] <= 0:
            raise t.error("overhead_s", "must be > 0")
        return LinearCostModel(**coeffs, **_decode_table(t), kv=kv, name=name, provenance=provenance)
    if kind == "roofline":
        t.no_unknown(_ROOFLINE_KEYS)
        return RooflineCostModel(
            gpu, model,
            compute_efficiency=t.number("compute_efficiency", positive=True, at_most=1.0),
            memory_efficiency=t.number("memory_efficiency", positive=True, at_most=1.0),
            overhead_s=t.number("overhead_s"),
            per_seq_overhead_s=t.number("per_seq_overhead_s", default=0.0),
            prefill_query_tile=t.integer("prefill_query_tile", default=128),
            kv=kv, name=name, provenance=provenance,
        )
    if kind == "token-table":
        return _token_table(t, kv, name, provenance)
    raise t.error("kind", f"unknown cost model kind {kind!r}; expected one of {', '.join(KINDS)}")


def _token_table(t: _Table, kv: KvCapacity, name: str, provenance: dict) -> CostModel:
    """A token-table cost model (see TokenTableCostModel), its table checked here for the error's key."""
    t.no_unknown(_TOKEN_TABLE_KEYS)
    coeffs = {key: t.number(key, default=0.0 if key != "overhead_s" else None) for key in _TOKEN_TABLE_KEYS[1:-2]}
    knots, costs = t._raw("token_knots"), t._raw("token_cost_s")
    if not isinstance(knots, list) or not knots or any(isinstance(k, bool) or not isinstance(k, int) or k < 1
                                                       for k in knots):
        raise t.error("token_knots", f"expected a non-empty list of integers >= 1 (token counts), got {knots!r}")
    if not isinstance(costs, list) or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in costs):
        raise t.error("token_cost_s", f"expected a list of numbers (seconds), got {costs!r}")
    try:
        return TokenTableCostModel(**coeffs, token_knots=knots, token_cost_s=costs, kv=kv, name=name,
                                   provenance=provenance)
    except ValueError as exc:
        raise ProfileError(f"{t.path}: [{t.name}]: {exc}") from None


def _decode_table(t: _Table) -> dict:
    """The optional decode table of a linear cost model: both keys or neither, checked."""
    knots_key, costs_key = _DECODE_TABLE_KEYS
    if not t.has(knots_key) and not t.has(costs_key):
        return {}
    for key in _DECODE_TABLE_KEYS:
        if not t.has(key):
            other = costs_key if key == knots_key else knots_key
            raise t.error(key, f"missing (given {other} without it; the table needs both, one entry per knot)")
    knots, costs = t.data[knots_key], t.data[costs_key]
    if not isinstance(knots, list) or not knots or any(isinstance(k, bool) or not isinstance(k, int) or k < 1
                                                       for k in knots):
        raise t.error(knots_key, f"expected a non-empty list of integers >= 1 (decode sequence counts), got {knots!r}")
    if any(b <= a for a, b in zip(knots, knots[1:])):
        raise t.error(knots_key, f"must be strictly increasing, got {knots!r}")
    if not isinstance(costs, list) or any(isinstance(v, bool) or not isinstance(v, (int, float))
                                          or not math.isfinite(v) or v < 0 for v in costs):
        raise t.error(costs_key, f"expected a list of finite numbers >= 0 (seconds), got {costs!r}")
    if len(costs) != len(knots):
        raise t.error(costs_key, f"expected one value per knot ({len(knots)}), got {len(costs)}")
    return {knots_key: knots, costs_key: [float(v) for v in costs]}


def _build(path: Path, data: dict) -> Profile:
    top = _Table(path, "top level", data)
    top.no_unknown(_TOP_KEYS)
    name = top.string("name", default=path.stem)
    description = top.string("description", default="")
    gpu = _gpu(_table(path, data, "gpu"))
    model = _model(_table(path, data, "model"))
    engine_defaults = _engine_defaults(_table(path, data, "engine_defaults"))
    provenance = _provenance(_table(path, data, "provenance"))
    try:
        kv = _kv(_table(path, data, "kv", required=False), gpu, model, engine_defaults["gpu_memory_utilization"])
    except ValueError as exc:
        if isinstance(exc, ProfileError):
            raise
        raise ProfileError(f"{path}: [kv]: {exc}") from exc
    cost_model = _cost_model(_table(path, data, "cost_model"), gpu, model, kv, name, provenance)
    profile = Profile(name=name, cost_model=cost_model, gpu=gpu, model=model, provenance=provenance,
                      engine_defaults=engine_defaults, description=description, path=path)
    # A profile whose model does not fit at its own defaults is useless: say so now.
    try:
        profile.kv_capacity_blocks()
    except ValueError as exc:
        raise ProfileError(f"{path}: [kv]: {exc}") from exc
    return profile

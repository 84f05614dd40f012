"""Run specs and grids: what one run is, and how a study expands into runs.

A run is a scenario (a file, or the embedded default) with *overrides*: the
same nested dict shape :func:`driftsim.sim.scenario.load_scenario` merges (what CLI
flags set). A :class:`Grid` names axes (each a list of values) and seeds; its
expansion is the cartesian product in a fixed order (axes in the order
:data:`AXES` lists them, then generic dotted axes in the order given; seeds
innermost), so the same grid always gives the same specs with the same
labels.

Each spec carries the *resolved* scenario dict (file merged with overrides,
relative file paths made absolute), so a worker needs neither the scenario
file nor the driver's working directory: only driftsim and any trace file.

Axis names: the short names of :data:`AXES` (``rate_scale``, ``policy``,
``replicas``, ``profile``, ``calibration``, ``max_num_seqs``, ...) or any
dotted scenario key (``engine.block_size``, ``tenants.premium.slo_ttft_s``).
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from driftsim.sim.config import ConfigError
from driftsim.sim.policies import POLICIES, make_policy
from driftsim.sim.scenario import Scenario, build_admission, build_engine, build_gateway, build_profile, load_scenario

#: Short axis names and the scenario key each sets, in expansion order.
AXES: dict[str, tuple[str, ...]] = {
    "profile": ("profile",),
    "replicas": ("replicas",),
    "policy": ("gateway", "policy"),
    "placement": ("gateway", "placement"),
    "max_outstanding": ("gateway", "max_outstanding"),
    "router": ("gateway", "router"),
    "mode": ("engine", "mode"),
    "max_num_seqs": ("engine", "max_num_seqs"),
    "max_num_batched_tokens": ("engine", "max_num_batched_tokens"),
    "num_gpu_blocks": ("engine", "num_gpu_blocks"),
    "estimator": ("admission", "estimator"),
    "counter": ("admission", "counter"),
    "calibration": ("admission", "calibration"),
    "rate_scale": ("workload", "rate_scale"),
    "seed": ("seed",),
}
_BY_PATH = {path: name for name, path in AXES.items()}
_TRUE, _FALSE = {"true", "on", "yes"}, {"false", "off", "no"}


@dataclass
class RunSpec:
    """One simulation run.

    ``params``: the axis values of this run (``seed`` included), flat;
    ``overrides``: the nested scenario overrides they make (plus the study's
    fixed ones); ``scenario``: the resolved scenario dict the worker runs;
    ``config``: the label without the seed (runs that differ only in seed
    share it, and confidence intervals are taken over them); ``targets``:
    SLO targets (:class:`driftsim.capacity.slo.Target`) the worker evaluates;
    ``options``: what else to record (``timeseries``, ``cdf``), a mixed
    pool (``pool``: profile -> replicas, see :mod:`driftsim.capacity.runner`),
    and test hooks (``_fail_once``, ``_crash_once``: a marker file path).
    """

    index: int
    label: str
    config: str
    params: dict
    overrides: dict
    scenario: dict
    targets: tuple = ()
    options: dict = field(default_factory=dict)


@dataclass
class Grid:
    """A study: a base scenario, fixed overrides, axes (name -> values) and seeds."""

    scenario: str | None = None
    axes: dict[str, list] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0])
    fixed: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        axes: dict[str, list] = {}
        for name, values in self.axes.items():
            key = axis_name(name)
            if key == "seed":
                raise ConfigError("seeds are not an axis here: give them as seeds (--seeds 0,1,2)")
            if key in axes:
                raise ConfigError(f"axis {key!r} is given twice (as {name!r})")
            values = list(values) if isinstance(values, (list, tuple)) else [values]
            if not values:
                raise ConfigError(f"axis {key!r} has no values: an empty grid has nothing to run")
            seen: list = []
            for v in values:
                v = coerce(key, v)
                if v in seen:
                    raise ConfigError(f"axis {key!r} lists {v!r} twice")
                seen.append(v)
            axes[key] = seen
        order = [a for a in AXES if a in axes] + [a for a in axes if a not in AXES]
        self.axes = {a: axes[a] for a in order}
        if not self.seeds:
            raise ConfigError("seeds: no seeds given; an empty grid has nothing to run (e.g. --seeds 0,1,2)")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds: a seed is listed twice in {self.seeds}")
        self.seeds = [int(s) for s in self.seeds]

    @property
    def size(self) -> int:
        return math.prod(len(v) for v in self.axes.values()) * len(self.seeds)


def axis_name(name: str) -> str:
    """The canonical axis name: a short name of :data:`AXES`, else the dotted scenario key."""
    name = name.strip().replace("-", "_") if "." not in name else name.strip()
    if name in AXES:
        return name
    path = tuple(name.split("."))
    if any(not p for p in path):
        raise ConfigError(f"axis {name!r}: expected a short name ({', '.join(AXES)}) or a dotted scenario key")
    return _BY_PATH.get(path, name)


def axis_path(name: str) -> tuple[str, ...]:
    return AXES.get(name) or tuple(name.split("."))


def coerce(axis: str, value: Any) -> Any:
    """A value as the scenario wants it: strings from the command line parsed as TOML literals."""
    if isinstance(value, str):
        value = parse_value(value)
    if axis in ("replicas", "max_num_seqs", "max_num_batched_tokens", "max_outstanding", "num_gpu_blocks"):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"axis {axis!r}: expected integers, got {value!r}")
    if axis == "rate_scale":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value > 0 and math.isfinite(value)):
            raise ConfigError(f"axis 'rate_scale': expected numbers > 0, got {value!r}")
        value = float(value)
    if axis == "calibration" and not isinstance(value, bool):
        raise ConfigError(f"axis 'calibration': expected on/off (true/false), got {value!r}")
    return value


def parse_value(text: str) -> Any:
    """``'1.5'`` -> 1.5, ``'8'`` -> 8, ``'on'``/``'true'`` -> True, ``'[1, 2]'`` -> a list, else the string."""
    t = text.strip()
    if t.lower() in _TRUE:
        return True
    if t.lower() in _FALSE:
        return False
    try:
        return tomllib.loads(f"v = {t}")["v"]
    except tomllib.TOMLDecodeError:
        return t


def parse_list(text: str) -> list:
    """``'0.5,1,1.5'`` -> [0.5, 1, 1.5]; empty parts are an error (an empty grid)."""
    parts = [p.strip() for p in text.split(",")]
    if not text.strip() or any(not p for p in parts):
        raise ConfigError(f"expected a comma-separated list of values, got {text!r}")
    return [parse_value(p) for p in parts]


def parse_seeds(text: str) -> list[int]:
    """``'0,1,2'``, ``'0-4'`` or ``'0..4'`` (inclusive) -> a list of seeds."""
    out: list[int] = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        sep = ".." if ".." in part else ("-" if "-" in part[1:] else None)
        try:
            if sep:
                a, b = part.split(sep, 1)
                lo, hi = int(a), int(b)
                if hi < lo:
                    raise ValueError
                out.extend(range(lo, hi + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise ConfigError(f"seeds: expected integers or ranges like 0,1,2 or 0-4, got {part!r}") from None
    if not out:
        raise ConfigError(f"seeds: no seeds in {text!r}; an empty grid has nothing to run")
    return out


def parse_assignment(text: str) -> tuple[str, Any]:
    """``'engine.block_size=32'`` -> ('engine.block_size', 32)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"expected KEY=VALUE (e.g. engine.max_num_seqs=64), got {text!r}")
    return key.strip(), parse_value(value)


def set_path(tree: dict, path: Iterable[str], value: Any) -> dict:
    """Set ``tree[a][b][c] = value`` for path (a, b, c), creating tables; returns ``tree``."""
    path = list(path)
    node = tree
    for p in path[:-1]:
        nxt = node.get(p)
        if not isinstance(nxt, dict):
            nxt = node[p] = {}
        node = nxt
    node[path[-1]] = value
    return tree


def merge(base: dict, over: dict) -> dict:
    """``over`` merged into a copy of ``base`` (nested tables merged, other values replaced)."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def fmt_value(v: Any) -> str:
    if isinstance(v, bool):
        return "on" if v else "off"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, dict):
        return "+".join(f"{k}:{n}" for k, n in v.items())
    return str(v)


def label_of(params: dict) -> str:
    return " ".join(f"{k}={fmt_value(v)}" for k, v in params.items()) or "base"


def resolve(scenario: str | Path | None, overrides: dict) -> dict:
    """The scenario dict a run simulates: the file merged with ``overrides``, file paths made absolute.

    Raises :class:`ConfigError` naming an unknown key, as ``load_scenario`` does.
    """
    raw = load_scenario(scenario, overrides).raw
    w = raw.get("workload")
    if isinstance(w, dict) and isinstance(w.get("path"), str) and Path(w["path"]).exists():
        w["path"] = str(Path(w["path"]).resolve())
    prof = raw.get("profile")
    if isinstance(prof, str) and (prof.endswith(".toml") or "/" in prof) and Path(prof).exists():
        raw["profile"] = str(Path(prof).resolve())
    raw.setdefault("name", Path(scenario).stem if scenario else "driftsched")
    return raw


def make_spec(
    index: int,
    scenario: str | Path | None,
    fixed: dict,
    params: dict,
    *,
    targets: tuple = (),
    options: dict | None = None,
) -> RunSpec:
    """One spec from a base scenario, fixed overrides and this run's axis values (``seed`` included)."""
    over = copy.deepcopy(fixed)
    options = dict(options or {})
    for name, value in params.items():
        if name == "pool":  # a GPU pool (profile -> replicas) is run by the runner, not a scenario key
            options["pool"] = dict(value)
            continue
        set_path(over, axis_path(name), value)
    label = label_of(params)
    config = label_of({k: v for k, v in params.items() if k != "seed"})
    return RunSpec(
        index=index, label=label, config=config, params=dict(params), overrides=over,
        scenario=resolve(scenario, over), targets=tuple(targets), options=options,
    )  # fmt: skip


def expand(grid: Grid, *, targets: tuple = (), options: dict | None = None, record_first_seed: bool = True) -> list[RunSpec]:
    """Every run of ``grid`` in a fixed order (axes in :data:`AXES` order, seeds innermost).

    With ``record_first_seed`` the first seed of each configuration also
    records time series and latency CDFs (for the report); the others
    record only their summary rows.
    """
    names = list(grid.axes)
    specs: list[RunSpec] = []
    for combo in itertools.product(*(grid.axes[n] for n in names)):
        for k, seed in enumerate(grid.seeds):
            params = dict(zip(names, combo), seed=seed)
            opts = dict(options or {})
            if record_first_seed and k == 0:
                opts.setdefault("timeseries", True)
                opts.setdefault("cdf", True)
            specs.append(make_spec(len(specs), grid.scenario, grid.fixed, params, targets=targets, options=opts))
    return specs


def check_specs(specs: list[RunSpec]) -> None:
    """Fail before any run starts on what would fail every run: unknown policy or profile, bad engine limits.

    Builds each distinct configuration's profile, engine, gateway, admission
    and policy once (cheap: no trace is built). Raises :class:`ConfigError`
    (or ``ProfileError``) naming the configuration.
    """
    seen: set[str] = set()
    for spec in specs:
        raw = spec.scenario
        pool = spec.options.get("pool") or {raw.get("profile", "l4-qwen1.5-1.8b-chat"): raw.get("replicas", 1)}
        key = json.dumps([raw.get(k) for k in ("engine", "gateway", "admission", "replicas")] + [pool], sort_keys=True, default=str)
        if key in seen:
            continue
        seen.add(key)
        where = f"run {spec.config!r}: " if spec.config != "base" else ""
        replicas = raw.get("replicas", 1)
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 1:
            raise ConfigError(f"{where}replicas: expected an integer >= 1, got {replicas!r}")
        sc = Scenario(name=str(raw.get("name", "sweep")), raw=raw)
        gateway = build_gateway(sc)
        if gateway.policy.lower() not in POLICIES:
            raise ConfigError(f"{where}unknown policy {gateway.policy!r}; known: {', '.join(sorted(POLICIES))}")
        make_policy(gateway.policy, **gateway.policy_params)
        build_admission(sc)
        for profile in pool:
            psc = Scenario(name=sc.name, raw=dict(raw, profile=profile))
            build_engine(psc, build_profile(psc))

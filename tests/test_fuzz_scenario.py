"""Fuzz and property tests for scenario files: data only, limits enforced, every error a named ConfigError.

Hypothesis writes scenario TOML files: valid ones, valid ones with one value
made hostile (wrong type, nan/inf, 2**70, negative, 10,001-item arrays,
4,097-character strings, 20-deep nesting, unknown keys, unicode tenant
names), broken text (truncated, random bytes spliced in, BOM, CRLF) and pure
garbage. The property, for every file: ``load_scenario`` returns a scenario
whose parts build (profile, engine, gateway, admission, synthetic tenants),
or raises ``ConfigError`` naming the file (``ProfileError`` for a profile
that does not exist); never another exception, never a hang.

Budget: see tests/fuzzing.py.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from driftsim.costmodel.profiles import ProfileError
from driftsim.sim.config import ConfigError
from driftsim.sim.scenario import (
    LIMITS,
    _tenant_load,
    build_admission,
    build_engine,
    build_gateway,
    build_profile,
    load_scenario,
)
from tests.fuzzing import fuzz_settings, no_hang, tried

pytestmark = pytest.mark.fuzz
ROOT = Path(__file__).resolve().parent.parent
_counter = itertools.count()

# --------------------------------------------------------------------------- a tiny TOML writer (the test's own)

_BARE = re.compile(r"^[A-Za-z0-9_-]+$")


def toml_key(k: str) -> str:
    return k if _BARE.match(k) else toml_str(k)


def toml_str(s: str) -> str:
    # JSON's escapes are TOML basic-string escapes; TOML also wants DEL escaped.
    return json.dumps(s, ensure_ascii=False).replace("\x7f", "\\u007f")


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, str):
        return toml_str(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{toml_key(k)} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(type(v))


def toml_doc(d: dict) -> str:
    """Top-level scalars first, then one [table] per section (inline tables inside)."""
    lines = [f"{toml_key(k)} = {toml_value(v)}" for k, v in d.items() if not isinstance(v, dict)]
    for k, v in d.items():
        if isinstance(v, dict):
            lines.append(f"[{toml_key(k)}]")
            lines += [f"{toml_key(kk)} = {toml_value(vv)}" for kk, vv in v.items()]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- scenarios

PROFILES = ["a100-llama-3.1-8b", "h100-llama-3.1-8b", "l4-qwen1.5-1.8b-chat"]
names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=10)
small_pos = st.integers(1, 64)
secs = st.floats(0.01, 1000, allow_nan=False)


@st.composite
def lengths(draw) -> dict:
    kind = draw(st.sampled_from(["constant", "uniform", "lognormal"]))
    if kind == "constant":
        return {"kind": kind, "value": draw(small_pos)}
    if kind == "uniform":
        lo = draw(small_pos)
        return {"kind": kind, "low": lo, "high": lo + draw(small_pos)}
    return {"kind": kind, "mean": draw(st.floats(2, 500)), "cv": draw(st.floats(0.1, 2)), "max": 2048}


@st.composite
def scenarios(draw) -> dict:
    """A valid scenario as a dict."""
    tenant_names = draw(st.lists(names, min_size=1, max_size=4, unique=True))
    sc = {
        "name": draw(names),
        "seed": draw(st.integers(0, 2**63 - 1)),
        "replicas": draw(st.integers(1, 8)),
        "profile": draw(st.sampled_from(PROFILES)),
        "workload": {
            "kind": "synthetic",
            "num_requests": draw(st.integers(1, 200)),
            "rate_scale": draw(st.floats(0.1, 10)),
            "tenants": [
                {"name": t, "rate_per_s": draw(st.floats(0.1, 50)), "input": draw(lengths()), "output": draw(lengths())}
                for t in tenant_names
            ],
        },
        "engine": {"mode": draw(st.sampled_from(["continuous", "microbatch"])), "max_num_seqs": draw(small_pos),
                   "max_num_batched_tokens": 4096, "max_model_len": 4096},  # fmt: skip
        "gateway": {"policy": draw(st.sampled_from(["fifo", "sjf", "edf"]))},
        "admission": {"estimator": draw(st.sampled_from(["oracle", "driftsched"])), "error_sigma": draw(secs)},
        "tenants": {t: {"priority": draw(st.integers(-5, 5)), "slo_e2e_s": draw(secs)} for t in tenant_names},
    }
    if draw(st.booleans()):
        sc["horizon_s"] = draw(secs)
    return sc


def _paths(d, prefix=()):
    """Every (path, value) in a nested dict/list."""
    items = d.items() if isinstance(d, dict) else enumerate(d)
    for k, v in items:
        yield (*prefix, k), v
        if isinstance(v, (dict, list)) and v:
            yield from _paths(v, (*prefix, k))


def _deep(n: int):
    v = 1
    for _ in range(n):
        v = [v]
    return v


HOSTILE = st.one_of(
    st.sampled_from([float("nan"), float("inf"), -float("inf"), 2**70, -(2**70), 2**63, -1, 0, -1e300, 1e300, True,
                     "", "🙂", "\u202e", "x" * (LIMITS["string_chars"] + 1), [], {}, [1, "a"], {"a": {"b": {}}},
                     "__import__('os').system('true')", "${HOME}", "../../etc/passwd"]),  # fmt: skip
    st.builds(lambda n: list(range(n)), st.sampled_from([LIMITS["array_items"] + 1, 3])),
    st.builds(_deep, st.sampled_from([LIMITS["depth"] + 2, 2])),
    st.text(max_size=12),
    st.integers(),
    st.floats(),
)


@st.composite
def hostile_scenarios(draw) -> dict:
    """A valid scenario with one defect: a value swapped for a hostile one, a key dropped, or an unknown key added."""
    sc = draw(scenarios())
    path, _ = draw(st.sampled_from(list(_paths(sc))))
    *parents, last = path
    holder = sc
    for k in parents:
        holder = holder[k]
    kind = draw(st.sampled_from(["value", "value", "value", "drop", "unknown", "many_tenants"]))
    if kind == "value":
        holder[last] = draw(HOSTILE)
    elif kind == "drop" and isinstance(holder, dict):
        del holder[last]
    elif kind == "unknown" and isinstance(holder, dict):
        holder[draw(names)] = draw(HOSTILE)
    elif kind == "many_tenants":
        n = LIMITS["tenants"] + 1
        sc["tenants"] = {f"t{i}": {"slo_e2e_s": 1.0} for i in range(n)}
    return sc


# --------------------------------------------------------------------------- the property


def check_scenario_file(path: Path) -> str:
    """Load and build `path`; anything but success, ConfigError naming the file or ProfileError fails the test."""
    with no_hang():
        try:
            sc = load_scenario(path)
        except ConfigError as e:
            assert str(path) in str(e), f"error does not name the file: {e}"
            return "refused"
        try:
            profile = build_profile(sc)
        except ProfileError as e:
            assert "profile" in str(e)
            return "unknown-profile"
        try:
            build_engine(sc, profile)
            build_gateway(sc)
            build_admission(sc)
            for t in sc.raw.get("workload", {}).get("tenants", []):
                _tenant_load(t, sc.name)
        except ConfigError as e:
            assert re.search(r"\[(engine|gateway|admission|\[workload\.tenants\])\]", str(e)), str(e)
            return "refused-at-build"
    return "built"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("scenarios")


def _write(workdir: Path, data: bytes) -> Path:
    path = workdir / f"s{next(_counter)}.toml"
    path.write_bytes(data)
    return path


@fuzz_settings()
@given(sc=scenarios())
def test_valid_scenarios_load_and_build(workdir, sc):
    path = _write(workdir, toml_doc(sc).encode())
    outcome = check_scenario_file(path)
    tried("scenario:valid", outcome)
    assert outcome == "built"
    path.unlink()


@fuzz_settings()
@given(sc=hostile_scenarios())
def test_hostile_values_end_in_a_scenario_or_a_named_error(workdir, sc):
    path = _write(workdir, toml_doc(sc).encode())
    tried("scenario:hostile-values", check_scenario_file(path))
    path.unlink()


@fuzz_settings()
@given(data=st.data())
def test_broken_text_ends_in_a_named_error_or_a_scenario(workdir, data):
    text = toml_doc(data.draw(scenarios())).encode()
    kind = data.draw(st.sampled_from(["truncate", "splice", "bom", "crlf", "garbage", "text"]))
    if kind == "truncate":
        text = text[: data.draw(st.integers(0, len(text)))]
    elif kind == "splice":
        at = data.draw(st.integers(0, len(text)))
        text = text[:at] + data.draw(st.binary(min_size=1, max_size=8)) + text[at:]
    elif kind == "bom":
        text = b"\xef\xbb\xbf" + text
    elif kind == "crlf":
        text = text.replace(b"\n", b"\r\n")
    elif kind == "garbage":
        text = data.draw(st.binary(max_size=300))
    else:
        text = data.draw(st.text(max_size=300)).encode()
    path = _write(workdir, text)
    tried("scenario:broken-text", check_scenario_file(path))
    path.unlink()


# --------------------------------------------------------------------------- limits and "data, never code"


@pytest.mark.parametrize(
    "text, words",
    [
        ("a = " + "[" * 5000 + "]" * 5000, "nested too deep"),
        ("x = " + "[" * 20 + "1" + "]" * 20, "nested deeper than 16"),
        ("seed = -1", "seed: expected an integer in [0,"),
        ("seed = 170141183460469231731687303715884105727", "does not fit 64 bits"),
        ("replicas = 100000", "replicas: expected an integer in [1, 4096]"),
        ("horizon_s = nan", "expected a finite number"),
        ("horizon_s = -1.0", "horizon_s: expected a number in (0, 1e+09]"),
        ('name = "' + "n" * 5000 + '"', "a string of 5000 characters"),
        ("[workload]\nassign_tenants = [" + ", ".join('"t"' for _ in range(10_001)) + "]", "an array of 10001 items"),
        ("[workload]\nrate_scale = true", "rate_scale: expected a number"),
        ("[workload]\nnum_requests = 1.5", "num_requests: expected an integer"),
        ('[workload]\nassign_tenants = { gold = -1 }', "assign_tenants: expected tenant names"),
        ("[tenants.gold]\nslo_e2e_s = inf", "expected a finite number"),
        ("[tenants.gold]\npriority = \"high\"", "priority: expected an integer"),
        ("tenants = 3", "tenants: expected a table"),
        ("name = 'x\nyz'", "not valid TOML"),
    ],
)
def test_limits_are_named(tmp_path, text, words):
    path = tmp_path / "s.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as exc:
        load_scenario(path)
    assert str(path) in str(exc.value) and words in str(exc.value), str(exc.value)[:300]


def test_file_size_limit_and_unreadable_files(tmp_path):
    big = tmp_path / "big.toml"
    big.write_text("# " + "x" * LIMITS["file_bytes"] + "\n")
    with pytest.raises(ConfigError, match=r"big.toml: scenario file larger than 1048576 bytes"):
        load_scenario(big)
    with pytest.raises(ConfigError, match=r"cannot read the scenario file"):
        load_scenario(tmp_path)  # a folder
    (tmp_path / "bom.toml").write_bytes(b'\xef\xbb\xbfname = "x"\n')
    assert load_scenario(tmp_path / "bom.toml").name == "x"  # a byte-order mark, as some editors write, is fine
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match=r"bin.toml: not UTF-8 text"):
        load_scenario(tmp_path / "bin.toml")


def test_build_errors_name_the_section_and_file(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('[gateway]\nmax_outstanding = "3"\n[admission]\nerror_per_tenant = { a = 1 }\n')
    sc = load_scenario(path)
    with pytest.raises(ConfigError, match=r"\(.*s.toml\) \[gateway\] max_outstanding: expected an integer"):
        build_gateway(sc)
    with pytest.raises(ConfigError, match=r"\[admission\] error_per_tenant: expected a table of tenant"):
        build_admission(sc)
    path.write_text('[engine]\nmode = "micvobatch"\n')  # the config record's own check, now with the file named
    sc = load_scenario(path)
    with pytest.raises(ConfigError, match=r"\(.*s.toml\) \[engine\]: engine.mode: expected 'continuous'"):
        build_engine(sc, build_profile(sc))


def test_the_project_evaluates_no_code():
    """No eval/exec/pickle-loading anywhere in the project's own code: scenario and profile files are only data."""
    files = [p for d in ("sim", "traces", "costmodel", "profiling", "cli", "bench") for p in (ROOT / d).rglob("*.py")]
    assert files
    pattern = re.compile(r"(?<![\w.])(eval|exec)\s*\(|pickle\.loads?\s*\(|yaml\.load\s*\(|marshal\.loads?\s*\(")
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in files for i, line in enumerate(p.read_text().splitlines(), 1)
            if pattern.search(line)]  # fmt: skip
    assert hits == []
    scenario_src = (ROOT / "sim" / "scenario.py").read_text()
    assert "tomllib.loads(" in scenario_src


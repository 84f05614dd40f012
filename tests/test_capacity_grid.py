"""Grids expand deterministically into labelled run specs; bad grids and unknown names fail before any run."""

from __future__ import annotations

import pytest

from driftsim.costmodel.profiles import ProfileError
from driftsim.capacity.spec import Grid, check_specs, expand, parse_list, parse_seeds, parse_value
from driftsim.capacity.study import parse_sets, prepare_targets, read_study
from driftsim.sim.config import ConfigError
from tests.test_capacity_plan import small_scenario


def test_expansion_order_labels_and_overrides(tmp_path):
    path = small_scenario(tmp_path)
    grid = Grid(scenario=path, axes={"rate_scale": [0.5, 1.0], "policy": ["fifo", "sjf"], "engine.block_size": [16, 32]},
                seeds=[0, 1])  # fmt: skip
    specs = expand(grid)
    assert len(specs) == grid.size == 16
    assert list(grid.axes) == ["policy", "rate_scale", "engine.block_size"]  # AXES order, then generic axes
    assert specs[0].label == "policy=fifo rate_scale=0.5 engine.block_size=16 seed=0"
    assert specs[1].label == "policy=fifo rate_scale=0.5 engine.block_size=16 seed=1"  # seeds innermost
    assert specs[0].config == specs[1].config == "policy=fifo rate_scale=0.5 engine.block_size=16"
    assert [s.index for s in specs] == list(range(16))
    s = specs[-1]
    assert s.overrides == {"gateway": {"policy": "sjf"}, "workload": {"rate_scale": 1.0}, "engine": {"block_size": 32}, "seed": 1}
    assert s.scenario["gateway"]["policy"] == "sjf" and s.scenario["engine"]["block_size"] == 32
    assert s.scenario["engine"]["max_num_seqs"] == 128  # the file's values stay
    assert s.scenario["seed"] == 1
    assert [x.label for x in expand(grid)] == [x.label for x in specs]  # deterministic
    assert specs[0].options == {"timeseries": True, "cdf": True} and specs[1].options == {}  # first seed records more


def test_no_axes_is_one_configuration_per_seed(tmp_path):
    specs = expand(Grid(scenario=small_scenario(tmp_path), seeds=[3, 4]))
    assert [s.label for s in specs] == ["seed=3", "seed=4"] and {s.config for s in specs} == {"base"}


def test_relative_trace_path_is_made_absolute(tmp_path, monkeypatch):
    from pathlib import Path

    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    spec = expand(Grid(axes={}, fixed={"workload": {"kind": "trace", "path": "traces/data/azure2023_code.csv"}}))[0]
    assert Path(spec.scenario["workload"]["path"]).is_absolute()


@pytest.mark.parametrize(
    "axes, seeds, message",
    [
        ({"policy": []}, [0], "axis 'policy' has no values"),
        ({}, [], "no seeds given"),
        ({"replicas": [1, 1]}, [0], "axis 'replicas' lists 1 twice"),
        ({"replicas": ["two"]}, [0], "axis 'replicas': expected integers"),
        ({"rate_scale": [0]}, [0], "axis 'rate_scale': expected numbers > 0"),
        ({"calibration": ["maybe"]}, [0], "axis 'calibration': expected on/off"),
        ({"policy": ["fifo"], "gateway.policy": ["sjf"]}, [0], "axis 'policy' is given twice"),
    ],
)
def test_bad_grids_are_named(axes, seeds, message):
    with pytest.raises(ConfigError, match=message):
        Grid(axes=axes, seeds=seeds)


def test_unknown_policy_and_profile_fail_before_running(tmp_path):
    path = small_scenario(tmp_path)
    with pytest.raises(ConfigError, match="unknown policy 'lottery'; known: aging, edf"):
        check_specs(expand(Grid(scenario=path, axes={"policy": ["fifo", "lottery"]})))
    with pytest.raises(ProfileError, match="unknown profile 'b200-nope'; bundled profiles: .*a100-llama-3.1-8b"):
        check_specs(expand(Grid(scenario=path, axes={"profile": ["a100-llama-3.1-8b", "b200-nope"]})))
    with pytest.raises(ConfigError, match="max_num_batched_tokens must be >= engine.max_num_seqs"):
        check_specs(expand(Grid(scenario=path, axes={"max_num_seqs": [8192]})))
    with pytest.raises(ConfigError, match="unknown key.*max_num_seqz"):
        check_specs(expand(Grid(scenario=path, axes={"engine.max_num_seqz": [4]})))
    with pytest.raises(ConfigError, match="unknown key.*gatway"):
        expand(Grid(scenario=path, axes={"gatway.policy": ["fifo"]}))


def test_value_and_list_parsing():
    assert parse_value("1.5") == 1.5 and parse_value("8") == 8 and parse_value("sjf") == "sjf"
    assert parse_value("on") is True and parse_value("off") is False and parse_value("[1, 2]") == [1, 2]
    assert parse_list("0.5,1,1.5") == [0.5, 1, 1.5]
    assert parse_seeds("0-3") == [0, 1, 2, 3] and parse_seeds("0..2,7") == [0, 1, 2, 7] and parse_seeds("5") == [5]
    with pytest.raises(ConfigError, match="comma-separated"):
        parse_list("1,,2")
    with pytest.raises(ConfigError, match="seeds"):
        parse_seeds("a-b")
    assert parse_sets(["engine.max_num_seqs=64", "replicas=2", "policy=sjf"]) == {
        "engine": {"max_num_seqs": 64}, "replicas": 2, "gateway": {"policy": "sjf"}}  # fmt: skip


def test_study_file(tmp_path):
    small_scenario(tmp_path)
    f = tmp_path / "study.toml"
    f.write_text(
        'scenario = "small.toml"\nseeds = [0, 1]\nattainment = 0.95\n[axes]\nreplicas = [1, 2]\n'
        '[set]\nworkload = { num_requests = 200 }\n[prices]\n"a100-llama-3.1-8b" = 1.8\n[slo]\n"chat.ttft.p90" = 0.8\n'
    )
    st = read_study(f)
    assert st.scenario == str(tmp_path / "small.toml") and st.seeds == [0, 1] and st.axes == {"replicas": [1, 2]}
    assert st.prices == {"a100-llama-3.1-8b": 1.8} and st.slos[0].quantile == 0.9 and st.slos[0].threshold_s == 0.8
    targets, fixed = prepare_targets(st.scenario, st.fixed, st.slos, st.attainment)
    names = sorted(t.describe() for t in targets)
    assert names == ["batch p95 E2E <= 60 s", "chat p90 TTFT <= 0.8 s", "chat p95 E2E <= 20 s"]
    assert fixed["tenants"]["chat"]["slo_ttft_s"] == 0.8  # the per-request SLO follows the command line
    f.write_text("sedes = [0]\n")
    with pytest.raises(ConfigError, match="unknown key.*sedes"):
        read_study(f)

"""Executors: same results in any pool, retries of crashed runs, failures reported and never dropped."""

from __future__ import annotations

import pytest

from driftsim.capacity.pool import LocalPool, SerialPool, make_pool
from driftsim.capacity.runner import execute
from driftsim.capacity.spec import Grid, expand
from tests.test_capacity_plan import small_scenario


def specs_for(tmp_path, n_seeds=2, **options):
    grid = Grid(scenario=small_scenario(tmp_path), axes={"replicas": [1, 2]}, seeds=list(range(n_seeds)))
    specs = expand(grid, record_first_seed=False)
    for s in specs:
        s.options.update(options)
    return specs


def overall(out):
    return next(r for r in out.rows if r["tenant"] == "overall")


def test_runs_are_pure_functions_of_their_spec(tmp_path):
    spec = specs_for(tmp_path)[0]
    a, b = execute(spec), execute(spec)
    assert a.ok and b.ok
    strip = lambda rows: [{k: v for k, v in r.items() if k != "wall_s"} for r in rows]  # noqa: E731
    assert strip(a.rows) == strip(b.rows)
    assert overall(a)["requests"] == 400 and {r["tenant"] for r in a.rows} == {"chat", "batch", "overall"}


def test_serial_pool_retries_a_run_that_fails_once(tmp_path):
    specs = specs_for(tmp_path)
    specs[1].options["_fail_once"] = str(tmp_path / "marker")
    outs = SerialPool(retries=1).run(specs)
    assert [o.ok for o in outs] == [True] * 4
    assert outs[1].attempts == 2 and outs[0].attempts == 1
    assert (tmp_path / "marker").exists()


def test_a_run_failing_every_time_is_reported_not_dropped(tmp_path):
    specs = specs_for(tmp_path)
    specs[2].options["_fail_always"] = True
    outs = SerialPool(retries=2).run(specs)
    assert len(outs) == 4 and [o.ok for o in outs] == [True, True, False, True]
    assert outs[2].attempts == 3 and "failed after 3 attempts" in outs[2].error and "injected failure" in outs[2].error


def test_bad_input_fails_at_once_without_retries(tmp_path):
    specs = specs_for(tmp_path, n_seeds=1)
    specs[0].scenario["workload"] = {"kind": "trace", "path": str(tmp_path / "missing.csv")}
    outs = SerialPool(retries=2).run(specs)
    assert not outs[0].ok and outs[0].attempts == 1 and "missing.csv" in outs[0].error
    assert outs[1].ok


def test_local_pool_matches_serial_and_survives_a_dead_worker(tmp_path):
    specs = specs_for(tmp_path)
    serial = SerialPool().run(specs)
    specs[0].options["_crash_once"] = str(tmp_path / "crash")  # the worker process exits mid-run (as an OOM kill)
    specs[3].options["_fail_once"] = str(tmp_path / "fail")
    seen = []
    with LocalPool(2, retries=2) as pool:
        outs = pool.run(specs, on_result=lambda o: seen.append(o.index))
    assert sorted(seen) == [0, 1, 2, 3]  # streamed, one callback per run
    assert all(o.ok for o in outs), [o.error for o in outs]
    assert outs[0].attempts >= 2 and outs[3].attempts >= 2  # a dead worker charges every run then in flight
    for a, b in zip(serial, outs):
        assert overall(a)["e2e_s_p99"] == overall(b)["e2e_s_p99"]


def test_make_pool_picks_the_executor():
    assert isinstance(make_pool(jobs=1), SerialPool)
    pool = make_pool(jobs=2)
    assert isinstance(pool, LocalPool) and pool.workers == 2
    pool.close()


def test_ray_missing_gives_install_hint(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_ray(name, *a, **k):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    from driftsim.sim.config import ConfigError

    with pytest.raises(ConfigError, match=r"--ray needs the Ray package.*pip install 'driftsim\[ray\]'"):
        make_pool(ray="auto")

"""RayPool on a local Ray instance started by the tests: same results as serial, retries, nothing lost."""

from __future__ import annotations

import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'driftsim[ray]')")

from driftsim.capacity.pool import RayPool, SerialPool  # noqa: E402
from tests.test_capacity_pool import overall, specs_for  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


def test_ray_pool_streams_the_same_results_as_serial(tmp_path, local_ray):
    specs = specs_for(tmp_path)
    serial = SerialPool().run(specs)
    seen = []
    pool = RayPool(None, retries=1)  # Ray is already up: the pool uses it and leaves it running
    assert pool.workers == 2
    outs = pool.run(specs, on_result=lambda o: seen.append(o.index))
    pool.close()
    assert ray.is_initialized()
    assert sorted(seen) == [0, 1, 2, 3]
    assert all(o.ok for o in outs)
    for a, b in zip(serial, outs):
        assert overall(a)["e2e_s_p99"] == overall(b)["e2e_s_p99"]
    assert len({o.worker for o in outs}) >= 1


def test_ray_retries_a_task_that_fails_once_and_reports_one_that_always_fails(tmp_path, local_ray):
    specs = specs_for(tmp_path)
    specs[0].options["_fail_once"] = str(tmp_path / "fail")  # raises on the first attempt only
    specs[1].options["_crash_once"] = str(tmp_path / "crash")  # the worker process dies on the first attempt
    specs[2].options["_fail_always"] = True
    outs = RayPool(None, retries=2).run(specs)
    assert len(outs) == 4
    assert outs[0].ok and outs[1].ok and outs[3].ok
    assert (tmp_path / "fail").exists() and (tmp_path / "crash").exists()
    assert not outs[2].ok and "failed after 3 attempts" in outs[2].error and "injected failure" in outs[2].error

"""The engine's own state samples: one per commit, consistent with the run, thinned on request."""

import pytest

from driftsim.sim.config import EngineConfig
from driftsim.sim.run import simulate
from driftsim.sim.sampling import EngineSampler
from tests.factories import linear_cost, make_trace


def _run(sampler, rows):
    return simulate(make_trace(rows), cost=linear_cost(), engine=EngineConfig(max_num_seqs=2), num_blocks=64,
                    observers=[sampler])


def test_samples_show_the_batch_the_queue_and_kv_as_the_engine_holds_them():
    sampler = EngineSampler()
    res = _run(sampler, [(0.0, 40, 10)] * 4)
    df = sampler.frame()
    assert df.height > 0 and df["replica"].unique().to_list() == [0]
    assert (df["t_s"].diff().drop_nulls() >= 0).all()
    assert df["running"].max() == 2  # max_num_seqs
    assert df["waiting"].max() == 2  # 4 arrive at once, 2 wait
    (total,) = df["kv_total_blocks"].unique().to_list()  # 64 less the blocks the KV manager reserves
    assert 0 < total <= 64
    assert (df["kv_used_blocks"] <= total).all() and df["kv_used_blocks"].max() > 0
    last = df.row(-1, named=True)
    assert (last["running"], last["waiting"], last["kv_used_blocks"]) == (0, 0, 0)  # all done, all freed
    assert last["t_s"] == pytest.approx(res.requests["finish_s"].max())


def test_thinning_keeps_at_most_one_sample_per_interval():
    every = EngineSampler(every_s=0.05)
    _run(every, [(0.0, 40, 200)] * 4)
    t = every.frame()["t_s"]
    assert (t.diff().drop_nulls() >= 0.05).all()
    with pytest.raises(ValueError, match="every_s"):
        EngineSampler(every_s=-1)

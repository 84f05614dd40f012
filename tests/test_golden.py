"""Seeded golden runs: the per-request results of a few fixed scenarios, digested.

The digests were recorded from the code before its packages were moved and its engine
rewritten for reading; a change of layout must leave every one of them as it was, bit for
bit. A deliberate change of behaviour updates the digest in the same commit and says why.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from driftsim.cli.main import app
from driftsim.validation.rescore import rescore
from tests.factories import linear_cost

REPO = Path(__file__).resolve().parent.parent
CONV = REPO / "traces" / "data" / "azure2023_conv.csv"
CODE = REPO / "traces" / "data" / "azure2023_code.csv"
SAVED = Path(__file__).resolve().parent / "data" / "saved-validation"


def digest(frame: pl.DataFrame) -> str:
    """SHA-256 of every value in row order (floats by their exact repr), column names included."""
    text = json.dumps({"columns": frame.columns, "rows": frame.rows()}, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


def run_cli(args: list[str]) -> None:
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output


def requests_of(out: Path) -> pl.DataFrame:
    return pl.read_parquet(out / "requests.parquet")


SIMULATE = {
    "default": [],
    "conv-continuous-a100": ["--trace", str(CONV), "--tenants", "a=1,b=1", "--profile", "a100-llama-3.1-8b",
                             "--mode", "continuous", "--max-requests", "3000", "--rate-scale", "4"],
    "code-priority-cap-2-replicas": ["--trace", str(CODE), "--tenants", "chat=2,batch=1", "--profile",
                                     "h100-llama-3.1-8b", "--mode", "continuous", "--replicas", "2",
                                     "--policy", "priority", "--max-outstanding", "24", "--max-requests", "2000",
                                     "--rate-scale", "8", "--num-gpu-blocks", "600"],
    "default-sjf-driftsched-estimates": ["--policy", "sjf", "--estimator", "driftsched"],
}

GOLDEN = {
    "default": "faeaf0141d4b3a64e0701a420ef6609f6bf552aeeb5f603c50bb429ce08017b5",
    "conv-continuous-a100": "052ce9ab2e1faf5193921da537b3891167450e088e5a817dfc08feaf07d57703",
    "code-priority-cap-2-replicas": "7d89d99e6c7269f374c05f0d90ef254600583aebed34ad2ca11f4f96efdba055",
    "default-sjf-driftsched-estimates": "11dbd8e4542afe135e7fb471cb2af97e03edfabe7972d4ffe3e8a69227c3842c",
    "sweep": "c204f85f276fac38f0271606c8f07d8043f04a4dedcb579449bd2449a0182f5a",
    "reproduce-driftsched": "15155496afd7435a3bbf3f4b6e86177cf3bba1c0c4c396b9d9f7bbc146d574a3",
    "rescore": "64dc828afa23627173cb07232cd4f8af0b06d8b945394aba05a610c380ee14b0",
}


@pytest.mark.parametrize("name", sorted(SIMULATE))
def test_simulate_results_are_unchanged(name, tmp_path):
    run_cli(["simulate", *SIMULATE[name], "--out", str(tmp_path / "out")])
    requests = requests_of(tmp_path / "out")
    # no request carries prefix identity: nothing is cached and every recorded value is as before
    assert (requests["cached_tokens"] == 0).all()
    assert digest(requests.drop("cached_tokens")) == GOLDEN[name]


def test_sweep_results_are_unchanged(tmp_path):
    run_cli(["sweep", "--rate-scale", "0.5,1", "--policy", "fifo,priority", "--seeds", "0", "--jobs", "1",
             "--set", "workload.max_requests=600", "--out", str(tmp_path / "out")])
    table = pl.read_parquet(tmp_path / "out" / "results.parquet")
    assert digest(table.drop([c for c in table.columns if "wall" in c])) == GOLDEN["sweep"]


def test_reproduce_driftsched_is_unchanged(tmp_path):
    run_cli(["reproduce", "driftsched", "--seeds", "0", "--out", str(tmp_path / "out")])
    table = pl.read_parquet(tmp_path / "out" / "results.parquet")
    assert digest(table.drop([c for c in table.columns if "wall" in c])) == GOLDEN["reproduce-driftsched"]


def test_rescoring_a_saved_validation_is_unchanged(tmp_path):
    shutil.copytree(SAVED, tmp_path / "session")
    res = rescore(tmp_path / "session", cost=linear_cost())
    sims = [f for level in res.levels for f in level.sim]
    assert all((f["cached_tokens"] == 0).all() for f in sims)  # no prefix identity: nothing cached
    parts = [digest(f.drop("cached_tokens")) for f in sims]
    parts += [json.dumps(level.scores, sort_keys=True, default=repr) for level in res.levels]
    assert hashlib.sha256("\n".join(parts).encode()).hexdigest() == GOLDEN["rescore"]

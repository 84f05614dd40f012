"""Nothing a run writes is lost: unique folders, refused collisions, the umask's file mode, and a sweep
killed mid-way (a real process, SIGKILL or Ctrl-C) then resumed equals an uninterrupted sweep."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from driftsim.cli.main import app
from driftsim.errors import ConfigError
from driftsim.sim.atomic import atomic_write_text
from driftsim.sim.outdir import claim_folder, fresh_folder

runner = CliRunner()
REPO = Path(__file__).resolve().parent.parent
SWEEP = ["sweep", "--rate-scale", "0.5,1,1.5,2", "--policy", "fifo,priority", "--seeds", "0", "--jobs", "1",
         "--set", "workload.max_requests=1500", "--no-timeseries"]  # fmt: skip


def test_two_runs_in_the_same_second_keep_both_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        res = runner.invoke(app, ["simulate", "--max-requests", "50", "--policy", "fifo"])
        assert res.exit_code == 0, res.output
    folders = sorted((tmp_path / "driftsim-out").iterdir())
    assert len(folders) == 2
    assert all((f / "requests.parquet").is_file() for f in folders)


def test_fresh_folders_never_collide_even_within_one_second(tmp_path):
    made = {fresh_folder("x", root=tmp_path) for _ in range(50)}
    assert len(made) == 50 and all(p.is_dir() for p in made)


def test_a_named_folder_holding_files_is_refused_unless_forced(tmp_path):
    out = tmp_path / "out"
    assert runner.invoke(app, ["simulate", "--max-requests", "50", "--out", str(out)]).exit_code == 0
    before = (out / "requests.parquet").read_bytes()
    res = runner.invoke(app, ["simulate", "--max-requests", "60", "--out", str(out)])
    assert res.exit_code == 2 and "--out" in res.output and "--force" in res.output
    assert (out / "requests.parquet").read_bytes() == before
    res = runner.invoke(app, ["simulate", "--max-requests", "60", "--out", str(out), "--force"])
    assert res.exit_code == 0, res.output
    assert pl.read_parquet(out / "requests.parquet").height == 60


def test_claim_folder_refuses_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="--out .* not a folder"):
        claim_folder(tmp_path / "f", "x")


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_result_file_mode_follows_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        path = atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_sweep_refuses_an_unknown_table_format_before_any_run(tmp_path):
    res = runner.invoke(app, [*SWEEP, "--table-format", "xlsx", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "--table-format" in res.output
    assert not (tmp_path / "o").exists()


def _results(folder: Path) -> pl.DataFrame:
    table = pl.read_parquet(folder / "results.parquet")
    return table.drop([c for c in table.columns if "wall" in c or "cpu" in c or c == "worker"])


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_sweep_killed_midway_then_resumed_equals_an_uninterrupted_sweep(tmp_path, sig):
    whole = tmp_path / "whole"
    assert runner.invoke(app, [*SWEEP, "--out", str(whole)]).exit_code == 0
    cut = tmp_path / "cut"
    proc = subprocess.Popen([sys.executable, "-m", "driftsim", *SWEEP, "--out", str(cut)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    journal = cut / "journal"
    deadline = time.monotonic() + 120
    while len(list(journal.glob("run-*.pkl"))) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(sig)
    assert proc.wait(timeout=60) == (130 if sig == signal.SIGINT else -signal.SIGKILL)
    kept = {p.name: p.stat().st_mtime_ns for p in journal.glob("run-*.pkl")}
    assert 2 <= len(kept) < 8, "the sweep must be killed mid-way for this test to mean anything"
    assert not (cut / "results.parquet").exists()
    res = runner.invoke(app, ["sweep", "--resume", str(cut), "--jobs", "1"])
    assert res.exit_code == 0, res.output
    assert f"{len(kept)} of 8 runs already done" in res.output
    assert {n: (journal / n).stat().st_mtime_ns for n in kept} == kept  # nothing run twice
    assert _results(cut).equals(_results(whole))


def test_resume_refuses_grid_flags_and_a_folder_without_a_journal(tmp_path):
    res = runner.invoke(app, ["sweep", "--resume", str(tmp_path), "--policy", "fifo"])
    assert res.exit_code == 2 and "--resume" in res.output
    res = runner.invoke(app, ["sweep", "--resume", str(tmp_path)])
    assert res.exit_code == 2 and "journal" in res.output


def test_a_run_refused_on_its_input_leaves_no_empty_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, ["simulate", "--trace", str(tmp_path / "missing.csv")])  # refused once the run starts
    assert res.exit_code == 2 and "missing.csv" in res.output
    assert list((tmp_path / "driftsim-out").iterdir()) == []
    res = runner.invoke(app, ["simulate", "--trace", str(REPO / "traces/data/azure2023_conv.csv"), "--trace-format", "xyz"])
    assert res.exit_code == 2 and "xyz" in res.output  # refused while parsing the flags: nothing claimed at all
    assert list((tmp_path / "driftsim-out").iterdir()) == []

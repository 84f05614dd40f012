"""Option values settled without pydantic come out as typer's own coercion makes them; the rest is typer's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer import _coercion
from typer.models import OptionInfo
from typer.testing import CliRunner

from driftsim.cli import choices, plain_params
from driftsim.cli.main import app

CASES = [
    (int, {"min": 1}, ["1", "128", "4096", "0", "-3", "007", "1e3", " 5", "+5", "5.0", "abc", "9" * 30, 3, 0, 2.0]),
    (int, {}, ["0", "-7", "12", "-0", "1_000"]),
    (float, {"min": 0}, ["0.8", "5", "1.50", "-1", "-0.5", "inf", "nan", "1e-3", ".5", "5.", "0.1000000000000000055",
                         1.0, 2, float("inf")]),
    (float, {}, ["-2.25", "3"]),
    (str, {}, ["a100-llama-3.1-8b", "", "é", "  x "]),
    (choices.PolicyName, {}, ["fifo", "sjf", "FIFO", "bogus", choices.PolicyName.fifo]),
    (choices.TraceFormat, {}, ["auto", "native"]),
    (bool, {}, [True, False, "yes"]),
]


def _typer(annotation, info: OptionInfo, value):
    """What typer's own coercion returns, or the message it refuses with."""
    descriptor = _coercion.resolve_type_descriptor(annotation, info)
    try:
        return "ok", _coercion.build_runtime_param(descriptor)._coerce_value(value, param=None, ctx=None)
    except Exception as exc:  # noqa: BLE001 - the refusal itself is what is compared
        return "refused", str(exc)


@pytest.mark.parametrize("annotation, kwargs, values", CASES)
def test_a_settled_value_is_what_typer_makes_of_it(annotation, kwargs, values):
    for value in values:
        info = OptionInfo(**kwargs)
        plain = plain_params._plain(annotation, info, value, None, None, plain_params_types())
        if plain is plain_params._UNSETTLED:
            continue
        assert _typer(annotation, info, value) == ("ok", plain), value
        assert type(plain) is type(_typer(annotation, info, value)[1])


def test_paths_go_through_typers_checks(tmp_path: Path):
    existing = tmp_path / "f.parquet"
    existing.write_text("x")
    for info in (OptionInfo(), OptionInfo(exists=True), OptionInfo(dir_okay=False), OptionInfo(resolve_path=True)):
        for value in (str(existing), str(tmp_path), str(tmp_path / "missing"), f"{tmp_path}//f.parquet", "-", ""):
            plain = plain_params._plain(Path, info, value, None, None, plain_params_types())
            expected = _typer(Path, info, value)
            if plain is plain_params._UNSETTLED:
                continue
            assert expected == ("ok", plain), (info, value)
    assert plain_params._plain(Path, OptionInfo(exists=True), str(tmp_path / "missing"), None, None,
                               plain_params_types()) is plain_params._UNSETTLED  # fmt: skip


def test_the_common_values_are_settled_without_typers_coercion():
    types = plain_params_types()
    assert plain_params._plain(int, OptionInfo(min=1), "128", None, None, types) == 128
    assert plain_params._plain(float, OptionInfo(min=0), "0.8", None, None, types) == 0.8
    assert plain_params._plain(choices.PolicyName, OptionInfo(), "sjf", None, None, types) is choices.PolicyName.sjf
    assert plain_params._plain(Path, OptionInfo(), "out/x", None, None, types) == Path("out/x")


def test_refused_values_keep_typers_messages():
    def refusal(*args: str) -> str:
        result = CliRunner().invoke(app, ["simulate", *args])
        assert result.exit_code == 2
        return " ".join(result.output.replace("│", " ").split())  # the message as one line, out of its box

    assert "'--max-num-seqs': Input should be a valid integer, unable to parse string as an integer" in refusal(
        "--max-num-seqs", "abc")
    assert "'--max-num-seqs': Input should be greater than or equal to 1" in refusal("--max-num-seqs", "0")
    assert "'--policy': Value error, 'bogus' is not one of 'fifo'," in refusal("--policy", "bogus")


def test_simulate_imports_no_pydantic(tmp_path: Path):
    code = ("import sys; from driftsim.cli.main import app\n"
            "try:\n    app(['simulate', '--num-prompts', '3', '--request-rate', '2', '--out', sys.argv[1]])\n"
            "except SystemExit as e:\n    assert not e.code, e.code\n"
            "print(any(m == 'pydantic' or m.startswith('pydantic.') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run")], capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    assert out.strip().splitlines()[-1] == "False"


def plain_params_types():
    from typer import _param_types

    return _param_types

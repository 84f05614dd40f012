"""The README's commands run, and the docs' links lead somewhere.

Every ``driftsim`` line in a ``bash`` block of README.md runs here, in order,
in-process, from a scratch folder holding the README's own ``csv`` and
``toml`` examples (each under the name its "Saved as" sentence gives) and a
link to the bundled traces; each must exit 0 and fill the ``--out`` folder it names.
Lines in ``sh`` blocks need a server, a cluster or minutes: they are
parsed with ``--help`` appended, so an option the CLI no longer has fails.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from driftsim.cli.main import app

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = [*sorted(ROOT.glob("*.md")), *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
SAVED = re.compile(r"Saved as\s+`([\w.-]+)`[^`]*?```(?:csv|toml)\n(.*?)^```", re.MULTILINE | re.DOTALL)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _blocks(kind: str) -> list[str]:
    return [body for lang, body in FENCE.findall(README.read_text()) if lang == kind]


def _commands(kind: str) -> list[list[str]]:
    """The ``driftsim`` invocations of one kind of block, continuation lines joined, comments dropped."""
    out = []
    for body in _blocks(kind):
        for line in body.replace("\\\n", " ").splitlines():
            args = shlex.split(line, comments=True)
            if args[:1] == ["driftsim"]:
                out.append(args[1:])
    return out


def _out_folder(args: list[str]) -> str | None:
    for flag in ("--out", "-o"):
        if flag in args:
            return args[args.index(flag) + 1]
    return None


def test_readme_keeps_the_two_commands_and_ci_runs_the_test_one():
    text = README.read_text()
    setup = "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/driftsim simulate"
    tests = "bash tests/setup.sh && .venv/bin/python -m pytest"
    assert setup in _blocks("bash")[0] and tests in _blocks("bash")[1]
    assert text.index(setup) < text.index(tests)
    ci = [ln for ln in (ROOT / ".ci" / "run").read_text().splitlines() if ln and not ln.startswith(("#", "set ", "cd "))]
    assert ci == [tests]


def test_readme_bash_commands_run(tmp_path, monkeypatch):
    (tmp_path / "traces").symlink_to(ROOT / "traces")
    saved = SAVED.findall(README.read_text())
    assert {name for name, _ in saved} >= {"my-trace.csv", "my.toml"}, saved
    for name, body in saved:
        (tmp_path / name).write_text(body)
    monkeypatch.chdir(tmp_path)
    commands = _commands("bash")
    assert len(commands) >= 10, commands
    runner = CliRunner()
    for args in commands:
        result = runner.invoke(app, args)
        assert result.exit_code == 0, f"driftsim {shlex.join(args)}\n{result.output}"
        out = _out_folder(args)
        out = Path(out) if out is not None else None
        if out is not None:  # a results folder, or the one file a command writes
            assert (out.is_dir() and any(out.iterdir())) or out.stat().st_size > 0, f"driftsim {shlex.join(args)}: {out}"
    assert Path("runs/compare.html").stat().st_size > 0


@pytest.mark.parametrize("args", _commands("sh"), ids=lambda a: " ".join(a[:2]))
def test_readme_sh_commands_have_their_options(args):
    result = CliRunner().invoke(app, [*args, "--help"])
    assert result.exit_code == 0, f"driftsim {shlex.join(args)} --help\n{result.output}"


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation other than '-' and '_' dropped, spaces to '-'."""
    heads = re.findall(r"^#+ (.+)$", FENCE.sub("", path.read_text()), re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_doc_links_lead_to_files_and_headings(doc):
    for target in LINK.findall(FENCE.sub("", doc.read_text())):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        file, _, anchor = target.partition("#")
        dest = (doc.parent / file).resolve() if file else doc
        assert dest.exists(), f"{doc.relative_to(ROOT)}: link {target}: {dest} does not exist"
        if anchor:
            assert anchor in _anchors(dest), f"{doc.relative_to(ROOT)}: link {target}: no such heading"

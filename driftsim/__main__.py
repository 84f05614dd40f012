"""``python -m driftsim`` runs the command line, as ``driftsim`` does."""

from driftsim.cli.main import app

app(prog_name="driftsim")

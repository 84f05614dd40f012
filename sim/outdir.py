"""Output folders that never hold two runs: a fresh, unique folder per run, or one the user named and cleared.

NOTE: the default folder's name carries the time to the second *and* a random
suffix, and is created with ``mkdir`` without ``exist_ok``: two runs started
in the same second (a shell loop over policies) get two folders, and a
collision, however unlikely, is retried rather than shared.
"""

from __future__ import annotations

import secrets
from datetime import datetime
from pathlib import Path

from driftsim.errors import ConfigError

#: Where runs go when no folder is named.
OUT_ROOT = Path("driftsim-out")


def fresh_folder(name: str, root: Path = OUT_ROOT) -> Path:
    """Create and return ``<root>/<name>-<YYYYmmdd-HHMMSS>-<6 hex>``, a folder no other run has."""
    root.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        folder = root / f"{name}-{datetime.now():%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        return folder
    raise ConfigError(f"{root}: could not create a fresh output folder for {name!r}")  # pragma: no cover


def claim_folder(out: Path | None, name: str, *, force: bool = False, flag: str = "--out") -> Path:
    """The folder a run writes into: ``out`` (refused when it holds files, unless ``force``) or a fresh one.

    Checked before any work so a run never ends by refusing to save.
    """
    if out is None:
        return fresh_folder(name)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{flag} {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ConfigError(f"{flag} {out}: folder is not empty; results there would be overwritten "
                          "(give --force to write over them, or another folder)")  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    return out


def discard_if_empty(folder: Path) -> None:
    """Remove ``folder`` if it holds nothing (a run that failed before writing); never touches a file."""
    try:
        folder.rmdir()
    except OSError:
        pass

"""The real engine's spread from one validation session to another, beside each session's error.

A validation session measures the real engine's run-to-run spread between
back-to-back repeats (:func:`driftsim.validation.replay_sim.spread`). A server whose speed
moves over minutes (a shared host, a warming GPU) hides part of its noise
there: the same command run again later gives other real values. Given the
``validation.json`` of several sessions of the same command (same workload,
loads, gateway, engine limits and profile), :func:`session_spread` measures

- ``across``: the mean over pairs of real runs from *different* sessions of
  ``|x_i - x_j| / ((x_i + x_j) / 2)``, the error a real run of one session
  makes predicting a run of another: the noise floor at the scale of
  sessions;
- ``within``: the same over pairs from the same session (each session's own
  run-to-run spread, pooled);
- each session's held-out simulator error (the judged ``abs_err``).

Where a session's error is at or below ``across``, the simulator,
calibrated minutes before, predicts that session as well as a real run of
another session does.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from driftsim.sim.config import ConfigError
from driftsim.validation.scoring import OVERALL, TARGETS, pair_rel_diffs

#: what must be the same for two sessions to be the same command (config keys; server facts)
SAME_CONFIG = ("profile", "policy", "max_outstanding", "microbatch", "trace", "loads", "seed", "calibrate")
SAME_SERVER = ("max_model_len", "num_gpu_blocks", "block_size", "max_num_seqs", "max_num_batched_tokens",
               "chunked_prefill")
ALL_LEVELS = "all levels"


def load_session(path: str | Path) -> dict:
    """A session's ``validation.json`` (``path`` is the file or the folder it is in), checked for the keys
    :func:`session_spread` reads; ``ConfigError`` names the file and what is missing."""
    p = Path(path)
    if p.is_dir():
        p = p / "validation.json"
    try:
        doc = json.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such file (give a folder `driftsim validate --out` wrote, or its "
                          "validation.json)") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{p}: not a readable validation.json ({exc})") from None
    for key in ("config", "server", "levels", "all_levels"):
        if key not in doc:
            raise ConfigError(f"{p}: no '{key}' (not a validation.json, or one from before re-scoring; "
                              "run `driftsim validate --rescore` on its folder)")
    for i, lv in enumerate(doc["levels"]):
        if "load" not in lv or not lv.get("runs"):
            raise ConfigError(f"{p}: levels[{i}] has no load or no real runs")
    doc["_path"] = str(p)
    return doc


def _check_same(docs: list[dict]) -> None:
    ref = docs[0]
    for doc in docs[1:]:
        for section, keys in (("config", SAME_CONFIG), ("server", SAME_SERVER)):
            for k in keys:
                a, b = ref[section].get(k), doc[section].get(k)
                if a != b:
                    raise ConfigError(f"{doc['_path']}: {section}.{k} is {b!r}, {ref['_path']} has {a!r}: "
                                      "not the same command, so their real runs are not repeats of each other")
        la = [(lv["load"], lv.get("requests")) for lv in ref["levels"]]
        lb = [(lv["load"], lv.get("requests")) for lv in doc["levels"]]
        if la != lb:
            raise ConfigError(f"{doc['_path']}: levels (load, requests) {lb}, {ref['_path']} has {la}")


def _real(runs: list[dict], m: str, k: str) -> list[float]:
    return [r["groups"][OVERALL][m][k]["real"] for r in runs]


def session_spread(docs: list[dict]) -> dict:
    """Across- and within-session spread of the real runs and each session's error, per level and pooled,
    for the judged figures (:data:`driftsim.validation.scoring.TARGETS`). ``docs``: two or more :func:`load_session`
    results of the same command (``ConfigError`` otherwise).

    Returns ``{"sessions": [path, ...], "levels": {label: {"m:k": {"across", "within", "errors": [...],
    "bound"}}}}`` with ``label`` the load (as text) or ``"all levels"``.
    """
    if len(docs) < 2:
        raise ConfigError("give two or more sessions of the same command")
    _check_same(docs)
    scopes = [(str(lv["load"]), [d["levels"][i] for d in docs]) for i, lv in enumerate(docs[0]["levels"])]
    scopes.append((ALL_LEVELS, [d["all_levels"] for d in docs]))
    out: dict[str, dict] = {}
    for label, per_session in scopes:
        cells = {}
        for (m, k), bound in TARGETS.items():
            reals = [_real(s["runs"], m, k) for s in per_session]
            across = [d for i, xs in enumerate(reals) for ys in reals[i + 1:] for d in pair_rel_diffs(xs, ys)]
            within = [d for xs in reals for d in pair_rel_diffs(xs)]
            errors = [s["aggregate"]["groups"][OVERALL][m][k]["abs_err"] for s in per_session]
            cells[f"{m}:{k}"] = {"across": float(np.mean(across)) if across else math.nan,
                                 "within": float(np.mean(within)) if within else math.nan,
                                 "errors": [float(e) for e in errors], "bound": bound}
        out[label] = cells
    return {"sessions": [d["_path"] for d in docs], "levels": out}

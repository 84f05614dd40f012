"""``python -m costmodel linearize PROFILE``: print the ``[cost_model]`` table
of a linear fit to PROFILE's cost model (how the bundled ``*-linear``
profiles were made), with its error on the grid.

``python -m costmodel list``: the bundled profiles."""

from __future__ import annotations

import sys

from driftsim.costmodel.fit import linearize_profile
from driftsim.costmodel.profiles import list_profiles


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["list"]:
        print("\n".join(list_profiles()))
        return 0
    if len(argv) != 2 or argv[0] != "linearize":
        print("usage: python -m costmodel linearize PROFILE | python -m costmodel list", file=sys.stderr)
        return 2
    fit = linearize_profile(argv[1])
    print("[cost_model]")
    print('kind = "linear"')
    for key, value in fit.model.coefficients.items():
        print(f"{key} = {value!r}")
    print(f"# {fit.num_points} grid points; relative error mean {fit.rel_err_mean:.4f}, max {fit.rel_err_max:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

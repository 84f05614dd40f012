"""Builds the compiled lone-replica core (sim/_stepcore.c); everything else is in pyproject.toml.

No FMA contraction and no fast-math: the core's float operations must round exactly as the
Python engine's do (see driftsim/sim/stepcore.py). ``optional``: without a C compiler the
install still succeeds and every run uses the Python engine.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("driftsim.sim._stepcore", ["sim/_stepcore.c"], optional=True,
                             extra_compile_args=["-O2", "-ffp-contract=off", "-fno-fast-math"])])

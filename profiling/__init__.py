"""Profiling real vLLM engines to fit the batch-aware latency model.

- ``plan``: the sweep (prefill, decode, mixed points), sized by a time budget;
- ``offline``: vLLM in-process, every ``llm_engine.step()`` timed with the batch it ran;
- ``http``: any OpenAI-compatible server, the one client seam (httpx), steps recovered from token streams;
- ``sweep``: runs a plan on a driver within the budget, writing as it goes;
- ``measurements``: the step table and its metadata (Parquet or CSV), loading with clear errors;
- ``server``: start/stop a local vLLM server; ``tiny_model``: the random-weight test model;
  ``modelinfo``: a model folder's architecture for the profile.

The fit itself is ``driftsim.costmodel.fit.fit_measurements`` / ``write_profile``; the
commands are ``driftsim.cli.profiling_cmds``. Nothing here imports vllm or torch at
import time.
"""

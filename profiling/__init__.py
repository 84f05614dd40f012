"""Profiling real vLLM engines to fit the batch-aware latency model (measured profiles land in costmodel/profiles)."""

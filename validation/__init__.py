"""Validation: a trace replayed on a real vLLM engine and simulated from the same send times, scored side by side."""

"""The one error every layer raises for a bad configuration value (the message names the field)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field."""

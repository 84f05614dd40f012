"""Step times composed from measured GPU kernel tables, and profiles fitted to them.

``source`` is the interface a kernel-data source satisfies, ``aiconfigurator``
the source that reads NVIDIA AIConfigurator's published vLLM tables,
``architecture`` the dense-decoder shapes read from a config.json,
``compose`` one engine iteration's time from those, ``build`` the sampled,
fitted and written profile.
"""

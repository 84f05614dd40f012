"""Plotly figures embedded in one self-contained HTML page (no server, no network).

Every report (capacity, experiments, validation) embeds plotly.js once, with
the first figure, so the page opens offline in any browser.
"""

from __future__ import annotations

from collections.abc import Iterable


def figures_html(figures: Iterable) -> list[str]:
    """HTML fragments for the figures that exist (None is skipped); plotly.js rides with the first."""
    out: list[str] = []
    for fig in figures:
        if fig is None:
            continue
        out.append(fig.to_html(full_html=False, include_plotlyjs=not out, config={"displaylogo": False}))
    return out

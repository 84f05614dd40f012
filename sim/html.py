"""Plotly figures embedded in one self-contained HTML page (no server, no network).

Every report (capacity, experiments, validation) embeds plotly.js once, with
the first figure, so the page opens offline in any browser.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable


def figures_html(figures: Iterable) -> list[str]:
    """HTML fragments for the figures that exist (None is skipped); plotly.js rides with the first."""
    out: list[str] = []
    for fig in figures:
        if fig is None:
            continue
        out.append(fig.to_html(full_html=False, include_plotlyjs=not out, config={"displaylogo": False}))
    return out


def group_dropdown(fig, labels: list[str], counts: list[int], *, active: int = 0, menu_for_one: bool = False,
                   y: float = 1.0, pad_bottom: int | None = 40, margin_top: int = 120):
    """Show one group of traces at a time: group ``i`` is the next ``counts[i]`` traces of ``fig``,
    chosen from a dropdown (drawn only when there is a choice, unless ``menu_for_one``)."""
    starts = list(itertools.accumulate([0, *counts]))
    for k, trace in enumerate(fig.data):
        trace.visible = bool(counts) and starts[active] <= k < starts[active + 1]
    if len(labels) > 1 or (menu_for_one and labels):
        buttons = [dict(label=label, method="update",
                        args=[{"visible": [starts[i] <= k < starts[i + 1] for k in range(starts[-1])]}])
                   for i, label in enumerate(labels)]
        menu = dict(buttons=buttons, active=active, direction="down", x=1.0, xanchor="right", y=y, yanchor="bottom")
        if pad_bottom is not None:
            menu["pad"] = {"b": pad_bottom}
        fig.update_layout(updatemenus=[menu], margin=dict(t=margin_top))
    return fig

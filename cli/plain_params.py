"""Typer's option values without pydantic where a value is plain: whole numbers, decimals, names, paths, choices.

Typer (0.2x) turns every option value into its Python type through a
pydantic ``TypeAdapter``, built on first use, so the first option a command
reads imports pydantic, the longest part of ``driftsim simulate``'s
start-up after polars and numpy. :func:`install` gives typer a coercion
that settles plain values itself, with the result typer's would have
(``"128"`` to ``128``, a listed choice to its member, a path through
typer's own path checks), and hands everything else to typer's coercion
unchanged: other spellings (``1e3``, ``+5``, `` 7``), values out of an
option's range, unknown choices, paths typer's checks refuse. So a value
typer accepts comes out the same, and a value it refuses gets its message.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

_INT = re.compile(r"0|-?[1-9][0-9]{0,17}")  # what int() and pydantic read alike, well inside 64 bits
_DECIMAL = re.compile(r"-?(?:0|[1-9][0-9]{0,14})(?:\.[0-9]{1,15})?")
_UNSETTLED = object()


def install() -> None:
    """Route typer's per-option coercion through :func:`_plain` first (a no-op for a typer without it)."""
    try:
        from typer import _coercion, _param_types, core
    except ImportError:  # pragma: no cover - a typer without the pydantic coercion layer
        return
    typer_build = getattr(core, "build_runtime_param", None)
    if typer_build is None or getattr(typer_build, "__driftsim_plain__", False):
        return

    @dataclass(frozen=True)
    class PlainRuntimeParam(_coercion.RuntimeParam):
        descriptor: Any

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            out = _plain(self.annotation, self.parameter_info, value, param, ctx, _param_types)
            if out is not _UNSETTLED:
                return out
            return typer_build(self.descriptor)._coerce_value(value, param=param, ctx=ctx)

    def build(descriptor):
        if descriptor.file_annotation is not None:
            return typer_build(descriptor)
        return PlainRuntimeParam(annotation=descriptor.annotation, parameter_info=descriptor.parameter_info,
                                 descriptor=descriptor)  # fmt: skip

    build.__driftsim_plain__ = True
    core.build_runtime_param = build


def _plain(annotation: Any, info: Any, value: Any, param: Any, ctx: Any, types: Any) -> Any:
    """``value`` as typer's coercion returns it, or ``_UNSETTLED`` where that takes typer's own rules."""
    if info.parser is not None or getattr(info, "click_type", None) is not None:
        return _UNSETTLED
    if annotation is bool:
        return value if isinstance(value, bool) else _UNSETTLED
    if annotation is int or annotation is float:
        return _number(annotation, info, value)
    if annotation is str:
        return value if type(value) is str and value.isascii() else _UNSETTLED
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        try:
            return types.coerce_cli_choice(value, choices=list(annotation), case_sensitive=info.case_sensitive,
                                           ctx=ctx)  # fmt: skip
        except ValueError:
            return _UNSETTLED
    if isinstance(annotation, type) and issubclass(annotation, Path) and info.path_type is None:
        if type(value) is not str or not value or not value.isascii():
            return _UNSETTLED
        try:
            return types.coerce_cli_path(annotation(value), info, path_type=annotation, param=param, ctx=ctx)
        except Exception:  # noqa: BLE001 - typer's checks refused it: let typer say so, about the value as given
            return _UNSETTLED
    return _UNSETTLED


def _number(kind: type, info: Any, value: Any) -> Any:
    if info.clamp:
        return _UNSETTLED
    if type(value) is str:
        if not (_INT if kind is int else _DECIMAL).fullmatch(value):
            return _UNSETTLED
        number = kind(value)
    elif type(value) is kind and (kind is int or math.isfinite(value)):
        number = value
    else:
        return _UNSETTLED
    if (info.min is not None and not number >= info.min) or (info.max is not None and not number <= info.max):
        return _UNSETTLED
    return number

"""Stand-ins for the two rich modules typer's help renderer imports but driftsim's help never uses.

``typer.rich_utils`` imports ``rich.markdown`` (markdown-it) and
``rich.traceback`` (pygments) at its top, which is most of the time
``driftsim --help`` takes; driftsim's help is rich markup, not Markdown,
and its exceptions are not pretty-printed. :func:`install` puts small
stand-in modules in their place before typer loads: using either class,
or any other name of those modules, imports the real module then and
hands the call on, so nothing behaves differently, only later.
"""

from __future__ import annotations

import importlib
import sys
import types

_NAMES = {"rich.markdown": "Markdown", "rich.traceback": "Traceback"}


def _real(module: str) -> types.ModuleType:
    """The real module, imported now; it replaces the stand-in in ``sys.modules``."""
    stand_in = sys.modules.get(module)
    if stand_in is not None and getattr(stand_in, "__driftsim_stand_in__", False):
        del sys.modules[module]
    real = importlib.import_module(module)
    parent, _, child = module.rpartition(".")
    setattr(sys.modules[parent], child, real)
    return real


def _stand_in_class(module: str, name: str) -> type:
    def __new__(cls, *args, **kwargs):
        return getattr(_real(module), name)(*args, **kwargs)

    def __getattr__(attr: str):  # class attributes such as Traceback.from_exception
        return getattr(getattr(_real(module), name), attr)

    meta = type(f"_{name}Meta", (type,), {"__getattr__": lambda cls, attr: __getattr__(attr)})
    return meta(name, (), {"__new__": __new__, "__module__": module})


def _module_getattr(module: str):
    def __getattr__(attr: str):
        if attr.startswith("__"):  # the import system probing (__path__, __spec__...): not a use
            raise AttributeError(attr)
        return getattr(_real(module), attr)

    return __getattr__


def install() -> None:
    """Put the stand-ins in place (a no-op for a module that is already imported)."""
    for module, name in _NAMES.items():
        if module in sys.modules:
            continue
        stand_in = types.ModuleType(module)
        stand_in.__driftsim_stand_in__ = True
        setattr(stand_in, name, _stand_in_class(module, name))
        stand_in.__getattr__ = _module_getattr(module)
        sys.modules[module] = stand_in

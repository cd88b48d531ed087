"""Stages from outside the tree: ``--plugin pkg.module`` and the ``str_toolkit.stages`` entry points.

A plugin is a Python module that registers stages when imported (``@modules.registry.register`` on its
classes). Every script that builds or loads a model imports the plugins before it builds its parser, so
their names are in ``choices=`` and ``--help``::

    python train.py --plugin examples.plugin_stage.mobilenetv3 --FeatureExtraction MobileNetV3 ...

An installed package registers the same way through an entry point, which is imported by every script::

    [project.entry-points."str_toolkit.stages"]
    mobilenet = "my_package.mobilenet"

A checkpoint records the plugins its model needs (``required``). A checkpoint is untrusted input, so a
plugin it names is never imported on its word alone: it must have been given with ``--plugin`` or be an
installed entry point, or loading refuses with one line naming it (``check_required``).
"""
from __future__ import annotations

import importlib
import importlib.metadata
import os
import sys

from runtime import UsageError

ENTRY_POINT_GROUP = "str_toolkit.stages"
FLAG = "--plugin"
_loaded: list[str] = []  # the modules imported as plugins (given with --plugin, or entry points), in order


class PluginError(UsageError):
    """A plugin that cannot be imported, or one a checkpoint needs that the user did not name."""


def add_plugin_argument(parser) -> None:
    """``--plugin MODULE`` (repeatable). The scripts import the plugins before building the parser
    (``load_from_argv``); the flag is on the parser so that ``--help`` shows it and argparse accepts it."""
    parser.add_argument(FLAG, action="append", default=[], metavar="MODULE",
                        help="import MODULE (a dotted module name, importable from the current folder or installed) "
                             "before anything else: the stages it registers become choices of the stage flags; "
                             "repeatable. Installed packages' 'str_toolkit.stages' entry points load by themselves")


def names_in_argv(argv: list[str]) -> list[str]:
    """The values of ``--plugin X`` and ``--plugin=X`` in ``argv`` (before argparse has run)."""
    names = []
    for i, arg in enumerate(argv):
        if arg == FLAG and i + 1 < len(argv):
            names.append(argv[i + 1])
        elif arg.startswith(FLAG + "="):
            names.append(arg.split("=", 1)[1])
    return names


def load_from_argv(argv: list[str] | None) -> list[str]:
    """Import the installed entry points and the ``--plugin`` modules of ``argv`` (sys.argv's by default)
    → the plugin modules loaded so far."""
    load_entry_points()
    for name in names_in_argv(sys.argv[1:] if argv is None else argv):
        load(name)
    return list(_loaded)


def load(name: str) -> None:
    """Import one plugin module by its dotted name (the current folder is searched too, as ``python -m`` does)."""
    if name in _loaded:
        return
    if not name or name.endswith(".py") or "/" in name or os.sep in name:
        raise PluginError(f"--plugin {name!r}: give a module's dotted name (pkg.module, as in an import), not a "
                          "file path: examples/plugin_stage/mobilenetv3.py is --plugin examples.plugin_stage.mobilenetv3")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name and name.startswith(e.name):
            raise PluginError(f"--plugin {name}: no such module (run from the folder that holds it, add that folder "
                              "to PYTHONPATH, or install its package)") from None
        raise
    _loaded.append(name)


def load_entry_points() -> None:
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry.module not in _loaded:
            entry.load()
            _loaded.append(entry.module)


def loaded() -> list[str]:
    return list(_loaded)


def required(config) -> list[str]:
    """The plugin modules that registered the stages of ``config`` (a ``model.ModelConfig``), in stage order."""
    from modules.registry import builtin, combination_stages

    modules = [cls.__module__ for cls in combination_stages(config) if not builtin(cls)]
    return list(dict.fromkeys(modules))


def check_required(names: list, source) -> None:
    """Refuse a model file whose stages come from plugins the user has not loaded (``--plugin``) or installed
    (an entry point): its word alone does not import code."""
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise PluginError(f"{source}: its 'plugins' entry is not a list of module names")
    missing = [n for n in names if n not in sys.modules]  # imported by the user's --plugin or an entry point
    if missing:
        flags = " ".join(f"{FLAG} {n}" for n in missing)
        raise PluginError(f"{source} needs the plugin {', '.join(missing)} for its stages; a model file is not "
                          f"trusted to import code by itself: add {flags} if you trust it")

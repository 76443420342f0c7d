"""Checkpoint formats: each module here registers one or more `CheckpointFormat`s when imported.

`nonlocal_zoo.pretrained.convert` imports this package (and so every module in it) the first time the registry
is used. A new format is a new module in this folder; nothing else needs to change.
"""
import importlib
import pkgutil

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")

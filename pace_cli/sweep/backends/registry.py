"""The sweep-backend registry: a backend's name and where its class lives.

A backend is imported only when a sweep asks for it by name, so an engine's client (and its
optional package) costs nothing to a sweep that does not use it. Adding a backend is one module
with a :class:`~pace_cli.sweep.backends.base.SweepBackend` class plus one row here.
"""

from __future__ import annotations

from importlib import import_module

from pace_cli.errors import PaceError

BACKENDS = {
    "sequential": "pace_cli.sweep.backends.sequential:SequentialBackend",
    "ray": "pace_cli.sweep.backends.ray:RayBackend",  # optional extra: pip install 'pace-cli[ray]'
}


def backend_named(name: str, **options):
    """A new backend of the registered ``name``, built with ``options``."""
    where = BACKENDS.get(name)
    if where is None:
        raise PaceError(f"unknown sweep backend {name!r}", remedy=f"use one of: {', '.join(BACKENDS)}")
    module, _, attribute = where.partition(":")
    return getattr(import_module(module), attribute)(**options)

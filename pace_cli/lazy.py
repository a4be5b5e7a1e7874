"""Lazy package faces (PEP 562): a package names what it exports and from which submodule, and a
submodule is imported only when one of its names is first read.

That keeps light modules light: recipe validation reads ``pace_cli.data.sources`` without the data
sets behind it pulling in torch. A name is looked up on every read, not cached in the package, so a
test that patches it in its submodule reaches every caller that reads it through the face.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any, Callable


def lazy_face(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package``, whose ``exports`` map name -> submodule."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(import_module(f"{package}.{module}"), name)

    def __dir__() -> list[str]:
        return sorted(set(vars(import_module(package))) | set(exports))

    return __getattr__, __dir__

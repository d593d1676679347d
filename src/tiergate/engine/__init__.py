"""The decision engine: compiled (Cython) when available, else the pure-Python twin.

``TIERGATE_NO_EXTENSIONS=1`` selects the pure-Python engine;
``TIERGATE_REQUIRE_EXTENSIONS=1`` makes this import fail when the compiled
engine is missing, so a silently failed build cannot pass CI. The other
compiled modules (``tiergate._native.columns``, the columnar kernels, and
``tiergate._native.wire``, the wire codec) go with the compiled engine:
:func:`native_module` gives them.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import TYPE_CHECKING, Literal

from . import constants
from .batch import DecisionBatch
from .reference import NEVER
from .reference import Engine as PyEngine

__all__ = [
    "IMPLEMENTATION",
    "NEVER",
    "DecisionBatch",
    "Engine",
    "PyEngine",
    "constants",
    "native_module",
]


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


IMPLEMENTATION: Literal["compiled", "python"]

if TYPE_CHECKING:
    Engine = PyEngine
elif _flag("TIERGATE_NO_EXTENSIONS"):
    if _flag("TIERGATE_REQUIRE_EXTENSIONS"):
        raise ImportError("TIERGATE_REQUIRE_EXTENSIONS=1 contradicts TIERGATE_NO_EXTENSIONS=1")
    Engine = PyEngine
    IMPLEMENTATION = "python"
else:
    try:
        from tiergate._native.engine import Engine
    except ImportError as exc:
        if _flag("TIERGATE_REQUIRE_EXTENSIONS"):
            raise ImportError(
                "the compiled tiergate engine is missing (TIERGATE_REQUIRE_EXTENSIONS=1): "
                "run `make build`"
            ) from exc
        Engine = PyEngine
        IMPLEMENTATION = "python"
    else:
        IMPLEMENTATION = "compiled"


def native_module(name: str) -> ModuleType | None:
    """The compiled module ``tiergate._native.<name>`` when the compiled engine is in
    use, else None (the caller then uses its pure-Python twin). A compiled module
    that is missing is an ImportError only under ``TIERGATE_REQUIRE_EXTENSIONS=1``."""
    if IMPLEMENTATION != "compiled":
        return None
    try:
        return importlib.import_module(f"tiergate._native.{name}")
    except ImportError:
        if _flag("TIERGATE_REQUIRE_EXTENSIONS"):
            raise
        return None

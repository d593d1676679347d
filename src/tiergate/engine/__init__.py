"""The decision engine: compiled (Cython) when available, else the pure-Python twin.

``TIERGATE_NO_EXTENSIONS=1`` selects the pure-Python engine;
``TIERGATE_REQUIRE_EXTENSIONS=1`` makes this import fail when the compiled
engine is missing, so a silently failed build cannot pass CI.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Literal

from . import constants
from .batch import DecisionBatch
from .reference import NEVER
from .reference import Engine as PyEngine

__all__ = ["IMPLEMENTATION", "NEVER", "DecisionBatch", "Engine", "PyEngine", "constants"]


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

"""The build switches themselves: TIERGATE_NO_EXTENSIONS and TIERGATE_REQUIRE_EXTENSIONS.

Each case imports ``tiergate.engine`` afresh in a subprocess with only the
switches it names set, and reports which engine, which kernels and which wire
codec it got.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from typing import Any

import pytest

#: Where the kernels that go with the engine are chosen ("module:attribute"), then the
#: module the compiled and the pure-Python implementation serve them from.
KERNELS = ("tiergate.engine.columns:kernels", "tiergate._native.columns", "tiergate.engine.columns")
KERNELS_AT, COMPILED_KERNELS, PYTHON_KERNELS = KERNELS
#: The compiled wire codec, which goes with the compiled engine (none with the pure-Python
#: one: the server then uses protobuf).
CODEC = "tiergate._native.wire"

#: Runs in the subprocess. With argument "hide", the compiled modules cannot be
#: imported, as after a build that failed or never ran.
PROBE = """
import importlib, json, sys

class HideCompiled:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name.startswith("tiergate._native."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

if sys.argv[1] == "hide":
    sys.meta_path.insert(0, HideCompiled())
try:
    import tiergate.engine as engine
except ImportError as exc:
    print(json.dumps({"import_error": str(exc)}))
    raise SystemExit(0)
from tiergate.engine import reference

module, attribute = sys.argv[2].split(":")
kernels = getattr(importlib.import_module(module), attribute)
native = sys.modules.get("tiergate._native.engine")
codec = engine.native_module("wire")
print(json.dumps({
    "implementation": engine.IMPLEMENTATION,
    "reference_engine": engine.Engine is reference.Engine,
    "compiled_engine": native is not None and engine.Engine is native.Engine,
    "kernels": kernels.__name__,
    "codec": codec.__name__ if codec is not None else None,
    "compiled_loaded": sorted(m for m in sys.modules if m.startswith("tiergate._native.")),
}))
"""

SWITCHES = ("TIERGATE_NO_EXTENSIONS", "TIERGATE_REQUIRE_EXTENSIONS")

needs_build = pytest.mark.skipif(
    importlib.util.find_spec("tiergate._native.engine") is None,
    reason="the compiled engine is not built (make build)",
)


def probe(hide_compiled: bool = False, **switches: str) -> dict[str, Any]:
    """Import tiergate.engine in a fresh interpreter with exactly ``switches`` set."""
    env = {k: v for k, v in os.environ.items() if k not in SWITCHES}
    env.update(switches)
    done = subprocess.run(
        [sys.executable, "-c", PROBE, "hide" if hide_compiled else "-", KERNELS_AT],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def python_twins(report: dict[str, Any]) -> bool:
    return (
        report.get("implementation") == "python"
        and report["reference_engine"]
        and report["kernels"] == PYTHON_KERNELS
        and report["codec"] is None
    )


def test_no_extensions_gives_the_pure_python_engine_and_kernels() -> None:
    report = probe(TIERGATE_NO_EXTENSIONS="1")
    assert python_twins(report), report
    assert report["compiled_loaded"] == []  # not even imported


@needs_build
def test_the_default_with_the_extension_built_is_compiled() -> None:
    for switches in ({}, {"TIERGATE_NO_EXTENSIONS": "0"}, {"TIERGATE_REQUIRE_EXTENSIONS": "1"}):
        report = probe(**switches)
        assert report.get("implementation") == "compiled", (switches, report)
        assert report["compiled_engine"] and not report["reference_engine"]
        assert report["kernels"] == COMPILED_KERNELS
        assert report["codec"] == CODEC


def test_without_the_compiled_modules_the_default_falls_back_to_python() -> None:
    report = probe(hide_compiled=True)
    assert python_twins(report), report


def test_require_extensions_without_the_compiled_modules_fails_at_import() -> None:
    report = probe(hide_compiled=True, TIERGATE_REQUIRE_EXTENSIONS="1")
    assert report == {
        "import_error": "the compiled tiergate engine is missing "
        "(TIERGATE_REQUIRE_EXTENSIONS=1): run `make build`"
    }


def test_require_extensions_contradicting_no_extensions_is_an_import_error() -> None:
    report = probe(TIERGATE_NO_EXTENSIONS="1", TIERGATE_REQUIRE_EXTENSIONS="1")
    assert report == {
        "import_error": "TIERGATE_REQUIRE_EXTENSIONS=1 contradicts TIERGATE_NO_EXTENSIONS=1"
    }

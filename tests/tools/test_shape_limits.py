"""scripts/shape.py, the size limits ``make lint`` holds the code to."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.engine_independent

ROOT = Path(__file__).resolve().parents[2]


def shape() -> ModuleType:
    spec = importlib.util.spec_from_file_location("shape", ROOT / "scripts" / "shape.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["shape"] = module
    spec.loader.exec_module(module)
    return module


def tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    (tmp_path / "src").mkdir(exist_ok=True)
    (tmp_path / "ext").mkdir(exist_ok=True)
    return tmp_path


def body(n: int, indent: str = "    ") -> str:
    return "".join(f"{indent}x{i} = {i}\n" for i in range(n))


def test_the_repository_meets_the_limits() -> None:
    assert shape().offenders(ROOT) == []


def test_each_limit_is_reported(tmp_path: Path) -> None:
    root = tree(
        tmp_path,
        {
            "src/pkg/long.py": "x = 1\n" * 701,
            "src/pkg/func.py": "def f() -> None:\n" + body(100),
            "src/pkg/klass.py": "class C:\n" + body(400),
            "src/pkg/v1/api_pb2.py": "x = 1\n" * 2000,  # generated: left out
            "ext/pkg/kernel.pyx": "cdef int k(int a) noexcept nogil:\n" + body(100),
            "ext/pkg/decl.pxd": "cdef int k(int a) noexcept nogil\n" * 3,
        },
    )
    found = "\n".join(shape().offenders(root))
    assert "long.py: module is 701 lines" in found
    assert "func.py:1: function f is 101 lines" in found
    assert "klass.py:1: class C is 401 lines" in found
    assert "kernel.pyx:1: function k is 101 lines" in found
    assert "api_pb2" not in found and "decl.pxd" not in found


def test_code_at_the_limits_passes(tmp_path: Path) -> None:
    root = tree(
        tmp_path,
        {
            "src/pkg/ok.py": "def f() -> None:\n" + body(99) + "x = 1\n" * 500,
            "ext/pkg/ok.pyx": "cdef class E:\n    cdef int k(self):\n" + body(98, " " * 8),
        },
    )
    assert shape().offenders(root) == []

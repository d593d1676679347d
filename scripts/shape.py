"""Size limits that keep each module readable: run by ``make lint``.

No module over 700 lines, no class over 400, no function over 100, in
``src/`` (generated protobuf code aside) and ``ext/`` (Cython: ``.pyx``,
``.pxd``, ``.pxi``). A class or function spans from its ``def``/``class`` line
(decorators included for Python) to its last line; for Cython, to the last
line indented deeper than its header. Prints every offender and exits 1 if
there is one.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

MODULE_LINES = 700
CLASS_LINES = 400
FUNCTION_LINES = 100
ROOT = Path(__file__).resolve().parent.parent
GENERATED = re.compile(r"_pb2(_grpc)?\.pyi?$")
CYTHON_HEADER = re.compile(
    r"^(?P<indent>\s*)(?:(?:cdef|cpdef)\s+(?:(?:public|api|inline|readonly)\s+)*"
    r"(?P<cclass>class\s+)?[^=:]*?(?P<cname>\w+)\s*[(:]|def\s+(?P<pname>\w+)\s*\(|"
    r"class\s+(?P<pclass>\w+))"
)


def python_offenders(path: Path, text: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(text, str(path))):
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            span = (node.end_lineno or node.lineno) - first + 1
            limit = CLASS_LINES if isinstance(node, ast.ClassDef) else FUNCTION_LINES
            if span > limit:
                what = "class" if isinstance(node, ast.ClassDef) else "function"
                found.append(f"{path}:{first}: {what} {node.name} is {span} lines (max {limit})")
    return found


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def cython_offenders(path: Path, text: str) -> list[str]:
    lines = text.splitlines()
    found = []
    for i, line in enumerate(lines):
        m = CYTHON_HEADER.match(line)
        if m is None:
            continue
        is_class = bool(m.group("cclass") or m.group("pclass"))
        name = m.group("cname") or m.group("pname") or m.group("pclass")
        depth = _indent(line)
        last = i
        for j in range(i + 1, len(lines)):
            body = lines[j]
            if not body.strip() or body.lstrip().startswith("#"):
                continue
            if _indent(body) <= depth and not body.lstrip().startswith((")", "]")):
                break
            last = j
        span = last - i + 1
        if span == 1:  # a declaration (.pxd, extern): no body
            continue
        limit = CLASS_LINES if is_class else FUNCTION_LINES
        if span > limit:
            what = "class" if is_class else "function"
            found.append(f"{path}:{i + 1}: {what} {name} is {span} lines (max {limit})")
    return found


def offenders(root: Path = ROOT) -> list[str]:
    found = []
    files = sorted((root / "src").rglob("*.py")) + sorted(
        p for ext in ("*.pyx", "*.pxd", "*.pxi") for p in (root / "ext").rglob(ext)
    )
    for path in files:
        if GENERATED.search(path.name):
            continue
        text = path.read_text(encoding="utf-8")
        rel = path.relative_to(root)
        n = len(text.splitlines())
        if n > MODULE_LINES:
            found.append(f"{rel}: module is {n} lines (max {MODULE_LINES})")
        if path.suffix == ".py":
            found += python_offenders(rel, text)
        else:
            found += cython_offenders(rel, text)
    return found


def main() -> int:
    found = offenders(Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else ROOT)
    for line in found:
        print(line)
    if found:
        print(f"{len(found)} over the size limits (scripts/shape.py)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Print the entries of requirements.lock that ``tiergate serve`` needs, hashes included.

    python scripts/lock_subset.py requirements.lock > runtime.lock

The image's runtime virtual env is installed from this with ``pip install
--require-hashes``: the same versions and hashes as the lock the tests run with,
without the dev and plot extras. The set is pyproject.toml's runtime
``dependencies`` and what they require in turn, read from the installed
packages' metadata (run it with the interpreter of a venv made from the lock).
"""

from __future__ import annotations

import re
import sys
import tomllib
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
_ENTRY = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==")


def runtime_closure(requirements: Iterable[str]) -> set[str]:
    """Canonical names of ``requirements`` and of everything they require, with the
    markers of this interpreter and no extras."""
    todo = [Requirement(r) for r in requirements]
    seen: set[str] = set()
    while todo:
        req = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        name = canonicalize_name(req.name)
        if name in seen:
            continue
        seen.add(name)
        for sub in metadata.requires(req.name) or []:
            todo.append(Requirement(sub))
    return seen


def lock_entries(text: str) -> dict[str, str]:
    """The lock's entries by canonical name: each ``name==version`` line with its
    continuation lines (hashes, ``# via`` comments)."""
    entries: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        m = _ENTRY.match(line)
        if m:
            current = entries.setdefault(canonicalize_name(m.group(1)), [])
            current.append(line)
        elif current is not None and line.startswith((" ", "\t")):
            current.append(line)
        else:
            current = None
    return {name: "\n".join(lines) for name, lines in entries.items()}


def subset(lock_text: str, names: Iterable[str]) -> str:
    entries = lock_entries(lock_text)
    missing = sorted(set(names) - set(entries))
    if missing:
        raise SystemExit(f"not in the lock: {', '.join(missing)} (regenerate requirements.lock)")
    return "\n".join(entries[n] for n in sorted(names)) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = runtime_closure(project["dependencies"])
    sys.stdout.write(subset(Path(argv[0]).read_text(), names))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Shared helpers of the webhook tests: fixture bodies and JSON path surgery."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path

FIXTURES = Path(__file__).parents[1] / "fixtures"
REAL = FIXTURES / "meta-webhooks"
SYNTHETIC = FIXTURES / "meta-webhooks-synthetic"

Path_ = tuple[str | int, ...]


def real(name: str) -> bytes:
    return (REAL / f"{name}.json").read_bytes()


def synthetic(name: str) -> bytes:
    return (SYNTHETIC / f"{name}.json").read_bytes()


def real_names() -> list[str]:
    return sorted(p.stem for p in REAL.glob("*.json"))


def synthetic_names() -> list[str]:
    return sorted(p.stem for p in SYNTHETIC.glob("*.json"))


def all_bodies() -> list[bytes]:
    return [real(n) for n in real_names()] + [synthetic(n) for n in synthetic_names()]


def paths(doc: object, prefix: Path_ = ()) -> Iterator[Path_]:
    """Every path (keys and indexes) inside a JSON document, the root excluded."""
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield (*prefix, key)
            yield from paths(value, (*prefix, key))
    elif isinstance(doc, list):
        for index, value in enumerate(doc):
            yield (*prefix, index)
            yield from paths(value, (*prefix, index))


def replaced(doc: object, path: Path_, value: object) -> object:
    """A deep copy of ``doc`` with the node at ``path`` replaced by ``value``."""
    out = copy.deepcopy(doc)
    node = out
    for step in path[:-1]:
        node = node[step]  # type: ignore[index]
    node[path[-1]] = value  # type: ignore[index]
    return out


def dumps(doc: object) -> bytes:
    return json.dumps(doc).encode()

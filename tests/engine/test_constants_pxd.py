"""The compiled modules' shared numbers (ext/tiergate/_native/constants.pxd) are the
Python ones: engine.constants, engine.records and the tiergate.v1 enums."""

from __future__ import annotations

import re
from pathlib import Path

from tiergate.engine import columns, constants, records
from tiergate.v1 import admission_pb2 as pb

PXD = Path(__file__).resolve().parents[2] / "ext" / "tiergate" / "_native" / "constants.pxd"


def declared() -> dict[str, int]:
    """The ``NAME = value`` entries of the .pxd's enum."""
    found = re.findall(r"^    ([A-Z][A-Z0-9_]*) = (0x[0-9A-Fa-f]+|\d+)$", PXD.read_text(), re.M)
    return {name: int(value, 0) for name, value in found}


def test_every_shared_number_equals_its_python_twin() -> None:
    pxd = declared()
    expected = {
        name: getattr(constants, name)
        for name in pxd
        if hasattr(constants, name) and isinstance(getattr(constants, name), int)
    }
    expected.update(
        TAG_ADMIT=records.TAG_ADMIT,
        ADMIT_VERSION=records.ADMIT_VERSION,
        TAG_BATCH=records.TAG_BATCH,
        BATCH_VERSION=records.BATCH_VERSION,
        BATCH_HEAD_SIZE=records.BATCH_HEAD.size,
        ROW_SIZE=records.ROW.size,
        BINDING_SIZE=records.BINDING.size,
        KIND_SHIFT=records.KIND_SHIFT,
        CATEGORY_SHIFT=records.CATEGORY_SHIFT,
        REASON_SLOTS=columns.REASONS,
        KIND_TEMPLATE=pb.TEMPLATE,
        KIND_FREE_FORM=pb.FREE_FORM,
        CATEGORY_MARKETING=pb.MARKETING,
        CATEGORY_SERVICE=pb.SERVICE,
    )
    assert {name: pxd[name] for name in expected} == expected
    # Every number the .pxd declares has a Python twin compared here.
    assert set(pxd) == set(expected)


def test_the_defined_times_and_limits_are_the_python_ones() -> None:
    text = PXD.read_text()
    assert "#define TG_NEVER (-((int64_t)1 << 62))" in text
    assert constants.UNLIMITED == (1 << 62) - 1
    assert "#define TG_UNLIMITED (((int64_t)1 << 62) - 1)" in text
    from tiergate.engine import NEVER

    assert NEVER == -(1 << 62)


def test_decisions_and_reasons_are_the_proto_enums() -> None:
    pxd = declared()
    for name, value in pb.Reason.items():
        if name in pxd:
            assert pxd[name] == value, name
    assert pxd["ADMIT"] == pb.DECISION_ADMIT
    assert pxd["RETRY_LATER"] == pb.DECISION_RETRY_LATER
    assert pxd["REJECT"] == pb.DECISION_REJECT

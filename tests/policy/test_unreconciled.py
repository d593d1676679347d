"""Admits kept for the shared store (``--store-failure open``) outlive a restart: the
journal's ``unreconciled`` and ``reconciled`` records replay them, and snapshots
carry them (a snapshot without them restores with none)."""

from __future__ import annotations

from tiergate.policy.journal import journal_json
from tiergate.policy.service import AdmissionService
from tiergate.policy.state import Unreconciled

from .helpers import T0, add_sender, service


def _services() -> tuple[AdmissionService, AdmissionService]:
    svcs = []
    for _ in range(2):
        svc = service("meta-2025")
        add_sender(svc, "a", waba_id="W1")
        add_sender(svc, "b", waba_id="W2")
        svcs.append(svc)
    return svcs[0], svcs[1]


def test_kept_admits_replay_from_the_journal_and_restore_from_snapshots() -> None:
    svc, again = _services()
    for s in (svc, again):
        s.drain_journal()
    st = svc.state
    a, b = (st.senders[sid].engine_index for sid in ("a", "b"))
    rows = [
        Unreconciled("run1", 1, T0, a, 4917000000001, 1, ""),
        Unreconciled("run1", 2, T0 + 1, b, 4917000000002, 3, "b:k"),
        Unreconciled("run1", 3, T0 + 2, a, 4917000000003, 1, ""),
        Unreconciled("run2", 1, T0 + 3, a, 4917000000004, 1, ""),
    ]
    for u in rows:  # as store/shared.py keeps them
        st.unreconciled.append(u)
        journal_json(st, {"k": "unreconciled", "row": list(u)})
    scope_a = st.senders["a"].scope.index
    st.reconciled("run1", scope_a, 3)  # Redis counted run1's rows of a's scope
    journal_json(st, {"k": "reconciled", "o": "run1", "scope": scope_a, "seq": 3})
    assert st.unreconciled == [rows[1], rows[3]]
    for record in svc.drain_journal():
        again.replay(record)
    assert again.state.unreconciled == [rows[1], rows[3]]

    restored = service("meta-2025")
    restored.restore(again.snapshot())
    assert restored.state.unreconciled == [rows[1], rows[3]]
    again.state.unreconciled = []
    restored.restore(again.snapshot())
    assert restored.state.unreconciled == []

"""Columnar request/response batches: one engine call decides a whole batch.

The policy layer appends request fields to ``array.array`` columns (C-level
appends, no call into the engine per item), then calls
``engine.decide_batch(batch)`` once; the engine fills the output columns.
Both engines read and write exactly these columns.
"""

from array import array


class DecisionBatch:
    """Input and output columns of one batch of decisions, in request order."""

    __slots__ = (
        "counted",
        "decided",
        "decision",
        "flags",
        "halt",
        "limit",
        "now",
        "number",
        "prev_counted",
        "reason",
        "recipient",
        "retry_at",
        "scope",
        "slot",
        "ticket",
        "used",
    )

    def __init__(self) -> None:
        # inputs
        self.now = array("q")  # ms; clamped per scope inside the engine
        self.scope = array("i")  # limit scope index (portfolio or phone number)
        self.number = array("i")  # phone number index
        self.recipient = array("Q")  # recipient key (constants.recipient_key)
        self.flags = array("I")  # constants.F_*
        self.limit = array("q")  # effective unique-recipient limit for this message
        # the policy layer's ticket id of each admit (its journal records and
        # ticket strings carry it; the engines do not read it)
        self.ticket = array("Q")
        # stop after the first row that is not admitted (a campaign plan: the rows
        # after it would be sent later); rows from ``decided`` on are left undecided
        self.halt = False
        # outputs (resized by the engine to len(now))
        self.decision = array("b")
        self.reason = array("b")
        self.retry_at = array("q")  # ms; 0 unless RETRY_LATER
        self.counted = array("b")  # 1 when this admit used a new unique-recipient slot
        self.used = array("q")  # unique recipients counted in the scope's 24 h after this item
        self.prev_counted = array("q")  # recipient's last counted time before this admit
        self.slot = array("q")  # stamp of the slot this admit created (release names it), else 0
        self.decided = 0  # rows decided: all of them, unless ``halt`` stopped early

    def add(
        self, now: int, scope: int, number: int, recipient: int, flags: int, limit: int, ticket: int
    ) -> None:
        self.now.append(now)
        self.scope.append(scope)
        self.number.append(number)
        self.recipient.append(recipient)
        self.flags.append(flags)
        self.limit.append(limit)
        self.ticket.append(ticket)

    def __len__(self) -> int:
        return len(self.now)

    def clear(self) -> None:
        for name in self.__slots__:
            col = getattr(self, name)
            del col[:]

    def prepare_outputs(self) -> int:
        """Size the output columns to the number of requests; return it."""
        n = len(self.now)
        # spelled out: this runs once per batch on the hot path
        if len(self.decision) != n:
            self.decision = _ZERO_B * n
        if len(self.reason) != n:
            self.reason = _ZERO_B * n
        if len(self.counted) != n:
            self.counted = _ZERO_B * n
        if len(self.retry_at) != n:
            self.retry_at = _ZERO_Q * n
        if len(self.used) != n:
            self.used = _ZERO_Q * n
        if len(self.prev_counted) != n:
            self.prev_counted = _ZERO_Q * n
        if len(self.slot) != n:
            self.slot = _ZERO_Q * n
        return n


_ZERO_B = array("b", [0])
_ZERO_Q = array("q", [0])

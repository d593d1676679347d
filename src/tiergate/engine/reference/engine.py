"""The reference :class:`Engine`: configuration, decisions, feedback, memory, reports."""

from __future__ import annotations

from ..batch import DecisionBatch
from ..constants import (
    ADMIT,
    F_DRY_RUN,
    F_FEP_FREE_FORM,
    F_FEP_PRICING,
    F_FORCE,
    F_MARKETING,
    F_QUALITY_BLOCK,
    F_REPLY_RESTRICTED,
    F_RESTRICTED,
    F_TEMPLATE,
    MARKETING_FREQUENCY,
    MARKETING_HISTORY,
    MESSAGING_LIMIT,
    OK,
    OUTSIDE_WINDOW,
    PAIR_RATE,
    QUALITY_PROTECTION,
    RECIPIENT_OPTED_OUT,
    REJECT,
    RETRY_LATER,
    SENDER_RESTRICTED,
    SHADOW_SHIFT,
    THROUGHPUT,
    UNLIMITED,
)
from ..results import Decided, Lookup, Usage
from .bounds import (
    MAX_KEY,
    MAX_RING_BUCKETS,
    MAX_TIME,
    MAX_WINDOW,
    NEVER,
    SLOT_GEN_BITS,
    SLOT_GEN_MAX,
    slot_stamp,
)
from .ring import Ring
from .snapshot import read_snapshot, write_snapshot
from .tables import Number, Scope, ScopeEntry
from .warmup import Warmup

Decision = tuple[int, int, int, int, int, int, int]
"""(decision, reason, retry_at_ms, counted, used, prev_counted, slot)"""

_U64 = (1 << 64) - 1
_ADMITTED = (ADMIT, OK, 0)
#: The most periods an outlook reports.
MAX_OUTLOOK = 1000


def _ceil_div(a: int, b: int) -> int:
    return -((-a) // b)


def _check_batch(batch: DecisionBatch, n: int, scopes: int, numbers: int) -> None:
    """decide_batch's checks of the whole batch, before it decides anything."""
    for col in ("scope", "number", "recipient", "flags", "limit"):
        if len(getattr(batch, col)) != n:
            raise ValueError(f"batch column {col} has {len(getattr(batch, col))} items, not {n}")
    for i in range(n):
        if not 0 <= batch.scope[i] < scopes:
            raise IndexError(f"batch item {i}: scope {batch.scope[i]} out of range")
        if not 0 <= batch.number[i] < numbers:
            raise IndexError(f"batch item {i}: number {batch.number[i]} out of range")
        if not 0 < batch.recipient[i] <= MAX_KEY:
            raise ValueError(
                f"batch item {i}: recipient key {batch.recipient[i]} is not in 1 .. 2**54 - 1"
            )
        if not -MAX_TIME <= batch.now[i] <= MAX_TIME:
            raise ValueError(f"batch item {i}: now must be within ±2**50 ms")


def _check_time(name: str, value: int) -> None:
    if not -MAX_TIME <= value <= MAX_TIME:
        raise ValueError(f"{name} must be within ±2**50 ms, got {value}")


def _check_recipient(name: str, value: int) -> None:
    if not 0 < value <= MAX_KEY:
        raise ValueError(f"{name} must be a recipient key in 1 .. 2**54 - 1, got {value}")


def _check_scope_params(freq_cap: int, freq_window_ms: int) -> None:
    if not 0 <= freq_cap <= MARKETING_HISTORY:
        raise ValueError(f"freq_cap must be 0..{MARKETING_HISTORY}")
    if not 0 <= freq_window_ms <= MAX_TIME:
        raise ValueError("freq_window_ms must be 0..2**50")


def _refusal(
    window_ms: int,
    now: int,
    s: Scope,
    num: Number,
    se: ScopeEntry | None,
    own: Warmup | None,
    flags: int,
    limit: int,
    skip: int,
    probe: tuple[bool, bool, bool, int, int, int],
) -> tuple[int, int, int] | None:
    """Steps 4 to 9 (``Engine.decide``): the first refusal (decision, reason,
    retry_at) by a rule whose reason is not in the bit set ``skip`` (the shadowed
    reasons), or None. ``own``: the number's own count in warm-up when the
    request needs a slot of it.
    ``probe``: (in a window, in a free-entry-point window, counting, and the
    throughput TAT, pair TAT and pair burst start as of ``now``)."""
    in_window, in_fep, counting, tput_tat, pair_tat, pair_start = probe
    template = flags & F_TEMPLATE
    marketing = flags & F_MARKETING
    ring = s.ring24
    # 4. free-form needs an open customer service window
    free_form_closed = not template and not (in_window or (in_fep and flags & F_FEP_FREE_FORM))
    if free_form_closed and not skip >> OUTSIDE_WINDOW & 1:
        return (REJECT, OUTSIDE_WINDOW, 0)
    # 5. opted-out recipients get no marketing
    opted_out = marketing and se is not None and se.opt_out
    if opted_out and not skip >> RECIPIENT_OPTED_OUT & 1:
        return (REJECT, RECIPIENT_OPTED_OUT, 0)
    # 6. messaging limit (business-initiated messages only)
    if counting:
        if flags & F_RESTRICTED and not skip >> SENDER_RESTRICTED & 1:
            return (REJECT, SENDER_RESTRICTED, 0)
        needs_slot = not (se is not None and se.last_counted > now - window_ms)
        over = _over_limit(ring, limit if needs_slot else None, own, now)
        if over is not None and not skip >> MESSAGING_LIMIT & 1:
            return (over[0], MESSAGING_LIMIT, over[1])
    elif flags & F_REPLY_RESTRICTED and not skip >> SENDER_RESTRICTED & 1:
        # a reply (in a window) while Meta restricts them
        return (REJECT, SENDER_RESTRICTED, 0)
    # 7. protective rules
    if marketing:
        if s.freq_cap > 0 and se is not None and not skip >> MARKETING_FREQUENCY & 1:
            horizon = now - s.freq_window
            recent = sorted(t for t in se.marketing if t > horizon)
            if len(recent) >= s.freq_cap:
                return (
                    RETRY_LATER,
                    MARKETING_FREQUENCY,
                    recent[len(recent) - s.freq_cap] + s.freq_window,
                )
        if flags & F_QUALITY_BLOCK and not skip >> QUALITY_PROTECTION & 1:
            return (REJECT, QUALITY_PROTECTION, 0)
    # 8. sender throughput (GCRA, microseconds)
    if tput_tat - num.tput_tolerance > now * 1000 and not skip >> THROUGHPUT & 1:
        return (RETRY_LATER, THROUGHPUT, _ceil_div(tput_tat - num.tput_tolerance, 1000))
    # 9. pair rate: a burst, then nothing until it is paid back
    if num.pair_refuses(now, pair_tat, pair_start) and not skip >> PAIR_RATE & 1:
        return (RETRY_LATER, PAIR_RATE, pair_tat)
    return None


def _over_limit(
    ring: Ring, limit: int | None, warm: Warmup | None, now: int
) -> tuple[int, int] | None:
    """Whether a count that binds a counting send has no free slot: the scope's
    (``limit``; None when the send needs no new slot of it) or the number's own
    in warm-up (``warm``; None when it needs none of that). (REJECT, 0) when one
    never frees, else (RETRY_LATER, when every one that binds has a free slot)."""
    full = limit is not None and ring.total >= limit
    warm_full = warm is not None and warm.ring.total >= warm.cap
    if not (full or warm_full):
        return None
    retry = now
    if limit is not None and full:
        if limit <= 0:
            return (REJECT, 0)
        retry = ring.next_free(limit, now)
    if warm is not None and warm_full:
        if warm.cap <= 0:
            return (REJECT, 0)
        retry = max(retry, warm.ring.next_free(warm.cap, now))
    return (RETRY_LATER, retry)


class Engine:
    """Recipient tables, bucket rings and GCRA buckets; decisions in one call."""

    def __init__(
        self,
        bucket_ms: int = 60_000,
        window_ms: int = 86_400_000,
        long_bucket_ms: int = 3_600_000,
        long_window_ms: int = 604_800_000,
    ) -> None:
        if min(bucket_ms, window_ms, long_bucket_ms, long_window_ms) < 1:
            raise ValueError("bucket widths and windows must be >= 1 ms")
        if max(bucket_ms, window_ms, long_bucket_ms, long_window_ms) > MAX_WINDOW:
            raise ValueError("bucket widths and windows must be <= 2**40 ms")
        if max(window_ms // bucket_ms, long_window_ms // long_bucket_ms) > MAX_RING_BUCKETS:
            raise ValueError("a window may span at most 2**20 buckets")
        self.bucket_ms = bucket_ms
        self.window_ms = window_ms
        self.long_bucket_ms = long_bucket_ms
        self.long_window_ms = long_window_ms
        #: Entries older than a table's clock minus this are reclaimable.
        self.horizon_ms = max(window_ms + bucket_ms, long_window_ms + long_bucket_ms)
        self.scopes: list[Scope] = []
        self.numbers: list[Number] = []

    def _scope(self, scope: int) -> Scope:
        if not 0 <= scope < len(self.scopes):
            raise IndexError(f"scope {scope} out of range")
        return self.scopes[scope]

    def _number(self, number: int) -> Number:
        if not 0 <= number < len(self.numbers):
            raise IndexError(f"number {number} out of range")
        return self.numbers[number]

    def _number_cut(self, num: Number) -> int:
        """A number's entries expire once every time in them is at or before its
        scope's clock: decisions for the number (clamped to that clock) see such an
        entry exactly as no entry at all."""
        return self.scopes[num.scope].last_now + 1

    # -- configuration -------------------------------------------------------

    def add_scope(self, freq_cap: int = 0, freq_window_ms: int = 0) -> int:
        _check_scope_params(freq_cap, freq_window_ms)
        self.scopes.append(Scope(self, 0, 0))
        idx = len(self.scopes) - 1
        self.set_scope_params(idx, freq_cap, freq_window_ms)
        return idx

    def set_scope_params(self, scope: int, freq_cap: int, freq_window_ms: int) -> None:
        _check_scope_params(freq_cap, freq_window_ms)
        s = self._scope(scope)
        s.freq_cap = freq_cap
        s.freq_window = freq_window_ms
        s.horizon = max(self.horizon_ms, freq_window_ms)

    def add_number(
        self,
        scope: int,
        tput_interval_us: int = 12_500,
        tput_burst: int = 1,
        pair_interval_ms: int = 6_000,
        pair_burst: int = 1,
    ) -> int:
        self._scope(scope)
        n = Number(scope)
        n.set_params(tput_interval_us, tput_burst, pair_interval_ms, pair_burst)
        self.numbers.append(n)
        return len(self.numbers) - 1

    def set_number_params(
        self,
        number: int,
        tput_interval_us: int,
        tput_burst: int,
        pair_interval_ms: int,
        pair_burst: int,
    ) -> None:
        self._number(number).set_params(tput_interval_us, tput_burst, pair_interval_ms, pair_burst)

    def set_warmup(self, number: int, cap: int) -> None:
        """Cap the unique recipients ``number`` itself counts in the window, on top
        of its scope's limit (its own count kept; UNLIMITED: none, count dropped)."""
        num = self._number(number)
        if not 0 <= cap <= UNLIMITED:
            raise ValueError(f"cap must be 0 .. 2**62 - 1, got {cap}")
        num.warm = Warmup.with_cap(num.warm, self.bucket_ms, self.window_ms, cap)

    # -- decisions -----------------------------------------------------------

    def decide(
        self, now: int, scope: int, number: int, recipient: int, flags: int, limit: int
    ) -> Decided:
        s = self._scope(scope)
        num = self._number(number)
        _check_time("now", now)
        _check_recipient("recipient", recipient)
        if not 0 <= flags < 1 << 32:
            raise ValueError(f"flags must be a 32-bit unsigned value, got {flags}")
        if not -(1 << 63) <= limit < 1 << 63:
            raise ValueError(f"limit must be a signed 64-bit value, got {limit}")
        return Decided._make(self._decide(now, s, num, recipient, flags, limit))

    def _decide(
        self, now: int, s: Scope, num: Number, recipient: int, flags: int, limit: int
    ) -> Decision:
        now = s.clamp(now)
        if now > num.clock:
            num.clock = now
        se = s.table.get(recipient)
        ne = num.table.get(recipient)
        template = flags & F_TEMPLATE
        marketing = flags & F_MARKETING
        force = flags & F_FORCE
        last = se.last_counted if se is not None else NEVER
        in_window = ne is not None and now < ne.window_until
        in_fep = ne is not None and now < ne.fep_until
        # a free-entry-point window spares templates unless it is a pricing window only
        counting = bool(template) and not in_window and not (in_fep and not flags & F_FEP_PRICING)
        already = counting and last > now - self.window_ms
        needs_slot = counting and not already
        ring = s.ring24
        warm_last = num.warm.look(recipient, now) if num.warm is not None else NEVER
        # a number in warm-up also needs a slot of its own cap (own)
        own = num.warm if counting and warm_last <= now - self.window_ms else None
        now_us = now * 1000
        tput_tat = max(num.tput_tat, now_us)
        pair_tat = max(ne.pair_tat if ne is not None else NEVER, now)
        # a burst starts only once the pair has paid back the last one (its TAT)
        pair_start = ne.pair_start if ne is not None and pair_tat > now else now

        answer = _ADMITTED
        if not force:
            probe = (in_window, in_fep, counting, tput_tat, pair_tat, pair_start)
            refused = _refusal(self.window_ms, now, s, num, se, own, flags, limit, 0, probe)
            if refused is not None:
                shadow = flags >> SHADOW_SHIFT
                if not shadow >> refused[1] & 1:
                    return (*refused, 0, ring.total, last, 0)
                # A shadowed rule refused: the others still apply; if none refuses,
                # consume as an admit and answer what would have been answered.
                real = _refusal(self.window_ms, now, s, num, se, own, flags, limit, shadow, probe)
                if real is not None:
                    return (*real, 0, ring.total, last, 0)
                answer = refused

        counted = 1 if needs_slot else 0
        if flags & F_DRY_RUN:
            return (*answer, counted, ring.total + counted, last, 0)

        # every check passed: consume
        slot = 0
        if counting:
            if se is None:
                se = s.insert(recipient)
            for r in (ring, s.ring7):
                r.remove(last)
                r.add(now)
            se.last_counted = now
            if needs_slot:
                s.slots7.add(now)
                se.gen = se.gen + 1 if se.gen < SLOT_GEN_MAX else 1
                se.fresh = True
                slot = ((now + MAX_TIME) << SLOT_GEN_BITS) | se.gen
            else:
                se.fresh = False  # this admit relies on the earlier slot
            if num.warm is not None:
                num.warm.count(recipient, warm_last, now)
        if marketing:
            if se is None:
                se = s.insert(recipient)
            hist = se.marketing
            hist[hist.index(min(hist))] = now
        num.tput_tat = tput_tat + num.tput_interval
        if ne is None:
            ne = num.insert(recipient, self._number_cut(num))
        ne.pair_tat = pair_tat + num.pair_interval
        ne.pair_start = pair_start
        return (*answer, counted, ring.total, last, slot)

    def decide_batch(self, batch: DecisionBatch) -> None:
        """Decide every request of ``batch`` in order; fills its output columns.

        The whole batch is validated first (ValueError / IndexError naming the
        item), so a bad item decides nothing. With ``batch.halt`` set, deciding
        stops after the first row not admitted; ``batch.decided`` says how many
        rows were decided.
        """
        n = len(batch.now)
        _check_batch(batch, n, len(self.scopes), len(self.numbers))
        batch.prepare_outputs()
        halt = batch.halt
        batch.decided = n
        for i in range(n):
            d = self._decide(
                batch.now[i],
                self.scopes[batch.scope[i]],
                self.numbers[batch.number[i]],
                batch.recipient[i],
                batch.flags[i],
                batch.limit[i],
            )
            batch.decision[i] = d[0]
            batch.reason[i] = d[1]
            batch.retry_at[i] = d[2]
            batch.counted[i] = d[3]
            batch.used[i] = d[4]
            batch.prev_counted[i] = d[5]
            batch.slot[i] = d[6]
            if halt and d[0] != ADMIT:
                batch.decided = i + 1
                break

    # -- feedback ------------------------------------------------------------

    def release(
        self, scope: int, recipient: int, slot: int, prev_counted: int, number: int = -1
    ) -> bool:
        """Give back the slot an admit created (``slot``: its decision's ``slot``
        stamp), if no later admit relied on it; ``number`` (the number the
        admit was from; -1: unknown) gives back its warm-up count too.

        ``prev_counted`` is the decision's ``prev_counted``: never later than
        the time the admit counted the recipient. Stamps come back from
        gateways inside tickets, so one that cannot be a stamp this engine
        gave (a key, stamp or time out of range, or a ``prev_counted`` after
        the slot) releases nothing and returns False, like an unknown one.
        """
        s = self._scope(scope)
        stamp = slot_stamp(recipient, slot, prev_counted)
        if stamp is None:
            return False
        gen, t = stamp
        se = s.table.get(recipient)
        if se is None or not se.fresh or se.gen != gen or se.last_counted != t:
            return False
        for r in (s.ring24, s.ring7):
            r.remove(t)
            r.add(prev_counted)
        s.slots7.remove(t)
        se.last_counted = prev_counted
        se.fresh = False
        if 0 <= number < len(self.numbers) and (warm := self.numbers[number].warm) is not None:
            warm.release(recipient, t, prev_counted)
        return True

    def open_window(self, number: int, recipient: int, window_until: int, fep_until: int) -> None:
        """Open or extend a window; never shortens one already open longer."""
        num = self._number(number)
        _check_recipient("recipient", recipient)
        if window_until != NEVER:
            _check_time("window_until", window_until)
        if fep_until != NEVER:
            _check_time("fep_until", fep_until)
        ne = num.table.get(recipient)
        if ne is None:
            ne = num.insert(recipient, self._number_cut(num))
        ne.window_until = max(ne.window_until, window_until)
        ne.fep_until = max(ne.fep_until, fep_until)

    def close_window(self, number: int, recipient: int) -> None:
        ne = self._number(number).table.get(recipient)
        if ne is not None:
            ne.window_until = NEVER
            ne.fep_until = NEVER

    def hold_pair(self, number: int, recipient: int, until: int) -> None:
        """Meta answered 131056: the pair owes until ``until`` and bursts no sooner."""
        num = self._number(number)
        _check_recipient("recipient", recipient)
        _check_time("until", until)
        ne = num.table.get(recipient) or num.insert(recipient, self._number_cut(num))
        ne.pair_tat, ne.pair_start = max(ne.pair_tat, until), NEVER

    def set_opt_out(self, scope: int, recipient: int, opted_out: bool) -> None:
        s = self._scope(scope)
        _check_recipient("recipient", recipient)
        se = s.table.get(recipient)
        if se is None:
            if not opted_out:
                return
            se = s.insert(recipient)
        se.opt_out = bool(opted_out)

    def slow_throughput(self, number: int, now: int, pause_ms: int) -> None:
        """Meta answered 130429: admit nothing from this number for ``pause_ms``."""
        num = self._number(number)
        _check_time("now", now)
        if not 0 <= pause_ms <= MAX_TIME:
            raise ValueError("pause_ms must be 0..2**50")
        num.spend_throughput(now, (now + pause_ms) * 1000 + num.tput_tolerance)

    def take_throughput(self, number: int, now: int) -> None:
        """An inbound message: Meta counts it toward the number's throughput."""
        num = self._number(number)
        _check_time("now", now)
        num.spend_throughput(now, max(num.tput_tat, now * 1000) + num.tput_interval)

    # -- memory --------------------------------------------------------------

    def reclaim(self, now: int) -> int:
        """Drop every expired entry (as of ``now``, clamped per scope); return how many.

        Advances each scope's clock to ``now`` like any call that takes time.
        """
        _check_time("now", now)
        removed = 0
        for s in self.scopes:
            s.clamp(now)
            removed += s.reclaim()
        for num in self.numbers:
            if now > num.clock:
                num.clock = now
            removed += num.reclaim(self._number_cut(num))
            if num.warm is not None:  # not recipient table entries: not counted
                num.warm.prune(self.scopes[num.scope].last_now)
        return removed

    # -- reports -------------------------------------------------------------

    def usage(self, scope: int, now: int, limit: int) -> Usage:
        """(used_24h, next_slot_free_at, unique_7d, slots_7d) for the scope at ``now``."""
        s = self._scope(scope)
        _check_time("now", now)
        now = s.clamp(now)
        nxt = s.ring24.next_free(limit, now) if limit > 0 else 0
        return Usage(s.ring24.total, nxt, s.ring7.total, s.slots7.total)

    def outlook(self, scope: int, now: int, period_ms: int, periods: int) -> tuple[int, list[int]]:
        """Read only: (recipients counted in the ``period_ms`` before ``now``, slots
        freeing in each of the ``periods`` periods after it) for the scope's 24 h ring."""
        s = self._scope(scope)
        _check_time("now", now)
        if not 1 <= period_ms <= MAX_WINDOW or not 0 <= periods <= MAX_OUTLOOK:
            raise ValueError(f"period_ms must be 1..2**40 and periods 0..{MAX_OUTLOOK}")
        return s.ring24.outlook(max(now, s.last_now), period_ms, periods)

    def open_windows(self, number: int, now: int) -> int:
        return sum(
            1
            for ne in self._number(number).table.values()
            if now < ne.window_until or now < ne.fep_until
        )

    def lookup(self, scope: int, number: int, recipient: int) -> Lookup:
        """(last_counted, opted_out, window_until, fep_until, pair_tat) of one recipient."""
        se = self._scope(scope).table.get(recipient)
        ne = self._number(number).table.get(recipient)
        return Lookup(
            se.last_counted if se is not None else NEVER,
            se.opt_out if se is not None else False,
            ne.window_until if ne is not None else NEVER,
            ne.fep_until if ne is not None else NEVER,
            ne.pair_tat if ne is not None else NEVER,
        )

    def warmup_usage(self, number: int, now: int) -> Usage:
        """(used_24h, next_slot_free_at, 0, 0) of the number's own count (0s: none)."""
        num = self._number(number)
        _check_time("now", now)
        if num.warm is None:
            return Usage(0, 0, 0, 0)
        return Usage(*num.warm.usage(self.scopes[num.scope].clamp(now)), 0, 0)

    def scope_now(self, scope: int) -> int:
        return self._scope(scope).last_now

    def entries(self) -> int:
        """Recipient entries held in all tables."""
        return sum(len(s.table) for s in self.scopes) + sum(len(n.table) for n in self.numbers)

    def sweeps(self) -> int:
        """Tables with a sweep (the reclaim at the nominal fill) under way."""
        tables: list[Scope | Number] = [*self.scopes, *self.numbers]
        return sum(t.sweep is not None for t in tables)

    # -- snapshots -----------------------------------------------------------

    def snapshot(self) -> bytes:
        """The whole engine state as bytes (format :data:`SNAPSHOT_VERSION`)."""
        return write_snapshot(self)

    def copy_sizes(self) -> tuple[int, ...]:
        """What ``copy_room`` needs to know ahead of a copy (nothing, here)."""
        return ()

    @staticmethod
    def copy_room(sizes: tuple[int, ...]) -> object:
        """Memory for a copy, made ahead in another thread (none here)."""
        return None

    def copy(self, room: object = None) -> Engine:
        """A new engine holding this one's state, sharing nothing (by way of a snapshot)."""
        return type(self).restore(self.snapshot())

    @classmethod
    def restore(cls, data: bytes) -> Engine:
        """A new engine holding the state ``data`` (from either engine's snapshot) describes."""
        return read_snapshot(cls, data)

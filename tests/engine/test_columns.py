"""The compiled columnar kernels give exactly what their pure-Python twin gives."""

from __future__ import annotations

import collections
import inspect
import random
import string
from array import array
from types import ModuleType
from typing import Any

import pytest

from tiergate.engine import NEVER, DecisionBatch, records
from tiergate.engine import columns as py
from tiergate.engine.constants import MAX_RECIPIENT_KEY, prefix_key, recipient_key
from tiergate.engine.results import BadItem, Finished, KeyCheck, KeyColumns, Prepared

compiled: ModuleType = pytest.importorskip("tiergate._native.columns")
META = array(
    "i",
    [
        0,
        0,
        368,
        368,
        132015,
        132016,
        131047,
        131050,
        131048,
        131049,
        131048,
        130429,
        131056,
        0,
        131049,
        0,
    ],
)


_ALNUM = string.ascii_letters + string.digits
_ODD: list[Any] = ["", "+", "12a4", "1" * 16, "+" + "9" * 15, "٣٣", "éé", "12 3", "+1+2", 5]
_ODD += ["us.123", "US.", "US.ENT.", "US.ENT", "U.S.1", "US." + "a" * 129, "12.3"]


def _bsuid(rng: random.Random) -> str:
    """A business-scoped user ID, its parent form, or one a character off."""
    cc = "".join(rng.choice(string.ascii_uppercase) for _ in range(2))
    rest = "".join(rng.choice(_ALNUM) for _ in range(rng.choice([1, 2, 7, 8, 9, 20, 128])))
    bsuid = f"{cc}.{'ENT.' if rng.random() < 0.3 else ''}{rest}"
    if rng.random() < 0.2:
        k = rng.randrange(len(bsuid))
        bsuid = bsuid[:k] + rng.choice(["-", "é", " ", ".", "a", "0", ""]) + bsuid[k + 1 :]
    return bsuid


def _recipient(rng: random.Random) -> Any:
    roll = rng.random()
    if roll < 0.65:
        digits = str(rng.randrange(10 ** rng.randrange(1, 16))).zfill(rng.randrange(1, 16))
        return ("+" if rng.random() < 0.2 else "") + digits[-15:]
    if roll < 0.85:
        return _bsuid(rng)
    return rng.choice(_ODD)


def test_same_functions_and_constants() -> None:
    """The stub re-exports the pure-Python declarations: stubtest does not check
    re-exports, so the compiled kernels' names, arguments and constants are
    compared here."""
    for name in py.__all__:
        if name in ("kernels", "early_answer", "refusal", "region_table"):
            continue  # the selection, the reference's own steps, a table both take
        ours, theirs = getattr(py, name), getattr(compiled, name)
        if not callable(ours):
            assert theirs == ours, name
            continue
        params = inspect.signature(ours).parameters.values()
        got = inspect.signature(theirs).parameters.values()
        assert [(p.name, p.kind, p.default) for p in got] == [
            (p.name, p.kind, p.default) for p in params
        ], name
    assert compiled.LAYOUT == py.LAYOUT


@pytest.mark.parametrize("seed", range(20))
def test_encode_recipients_agree(seed: int) -> None:
    rng = random.Random(seed)
    recipients = [_recipient(rng) for _ in range(rng.randrange(0, 60))]
    outs = []
    for mod in (py, compiled):
        out = array("Q", bytes(8 * len(recipients)))
        outs.append((mod.encode_recipients(recipients, out), out.tolist()))
    assert outs[0] == outs[1]
    bad, keys = outs[0]
    assert all(0 < k <= MAX_RECIPIENT_KEY for k in keys[: bad if bad >= 0 else None])
    for i, r in enumerate(recipients[: bad if bad >= 0 else None]):
        assert keys[i] == recipient_key(r)
    if bad >= 0:
        r = recipients[bad]
        with pytest.raises((ValueError, TypeError, AttributeError)):
            recipient_key(r)


@pytest.mark.parametrize("seed", range(20))
def test_check_items_agree(seed: int) -> None:
    rng = random.Random(seed)
    n = rng.randrange(0, 40)
    ns, nt = rng.randrange(1, 4), rng.randrange(0, 3)
    sidx = array("I", [rng.randrange(ns + (1 if rng.random() < 0.03 else 0)) for _ in range(n)])
    kinds = bytes(
        rng.choice([1, 2, 2, 1, 1, 1, 1, 0, 3][: 7 + (rng.random() < 0.05) * 2]) for _ in range(n)
    )
    cats = bytes(
        rng.choice([0, 1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 9][: 11 + (rng.random() < 0.05)])
        for _ in range(n)
    )
    tidx = array("I", [rng.randrange(nt + 1 + (1 if rng.random() < 0.03 else 0)) for _ in range(n)])
    a = py.check_items(n, sidx, ns, kinds, cats, tidx, nt)
    b = compiled.check_items(n, sidx, ns, kinds, cats, tidx, nt)
    assert a == b
    assert type(a) is type(b) is BadItem


def _tables(rng: random.Random, k: int, m: int) -> dict[str, Any]:
    return {
        "s_state": bytearray(rng.choice([0, 1, 1, 1, 2]) for _ in range(k)),
        "s_slot": array("i", [rng.randrange(2) for _ in range(k)]),
        "s_scope": array("i", [rng.randrange(3) for _ in range(k)]),
        "s_number": array("i", [rng.randrange(5) for _ in range(k)]),
        "s_limits": array("q", [rng.choice([50, 250, (1 << 62) - 1]) for _ in range(5 * k)]),
        "s_flags": array("I", [rng.randrange(64) & ~1 for _ in range(5 * k)]),
        "t_state": bytearray([0] + [rng.choice([0, 0, 1, 2]) for _ in range(m)]),
        "t_paused": array("q", [0] + [rng.choice([0, 0, 1_000_500]) for _ in range(m)]),
    }


def _prepare(mod: ModuleType, rng_seed: int) -> tuple[Any, ...]:
    rng = random.Random(rng_seed)
    n, k, m = rng.randrange(1, 50), rng.randrange(1, 5), rng.randrange(1, 4)
    tables = _tables(rng, k, m)
    sidx = array("I", [rng.randrange(k) for _ in range(n)])
    kinds = bytes(rng.choice([1, 2]) for _ in range(n))
    cats = bytes(rng.randrange(1, 5) for _ in range(n))
    tidx = array("I", [rng.randrange(1, m + 1) for _ in range(n)])
    at = array("q", [rng.choice([0, 1_000_000 + rng.randrange(1_000)]) for _ in range(n)])
    if rng.random() < 0.3:
        at = array("q")
    rkeys = array("Q", [recipient_key(str(4917000 + rng.randrange(20))) for _ in range(n)])
    eco = (
        {(sc, rk): 1_000_900 for sc in range(3) for rk in rkeys[::3]} if rng.random() < 0.5 else {}
    )
    last_now = array("q", [rng.choice([NEVER, 1_000_400]) for _ in range(2)])
    skip = bytearray(rng.random() < 0.2 for _ in range(n)) if rng.random() < 0.5 else b""
    pairs = [("4917000", 1), ("49170001", 2), ("491700012", 1), ("4", 3)]
    chosen = [pr for pr in pairs if rng.random() < 0.4]
    region = py.region_table(prefix_key(p, c) for p, c in chosen)
    region_lengths = bytes(sorted({len(p) for p, _ in chosen}))
    batch = DecisionBatch()
    z4, z8 = bytes(4 * n), bytes(8 * n)
    batch.now, batch.scope, batch.number = array("q", z8), array("i", z4), array("i", z4)
    batch.recipient, batch.flags = array("Q", z8), array("I", z4)
    batch.limit, batch.ticket = array("q", z8), array("Q", z8)
    rows, row_eco = array("i", z4), array("q", z8)
    dec, rsn = bytearray(n), bytearray(n)
    retry, limits, meta = array("q", z8), array("q", z8), array("i", z4)
    counts = array("q", bytes(8 * 16 * k))
    ret = mod.prepare(
        n,
        sidx,
        kinds,
        cats,
        tidx,
        at,
        rkeys,
        1_000_000,
        rng.random() < 0.8,
        rng.random() < 0.2,
        rng.randrange(100),
        tables["s_state"],
        tables["s_slot"],
        tables["s_scope"],
        tables["s_number"],
        tables["s_limits"],
        tables["s_flags"],
        last_now,
        tables["t_state"],
        tables["t_paused"],
        META,
        132001,
        region,
        region_lengths,
        eco,
        skip,
        batch,
        rows,
        row_eco,
        dec,
        rsn,
        retry,
        limits,
        meta,
        counts,
    )
    cols = [
        getattr(batch, c).tolist()
        for c in ("now", "scope", "number", "recipient", "flags", "limit", "ticket")
    ]
    assert type(ret) is Prepared
    return (
        ret,
        cols,
        rows.tolist(),
        row_eco.tolist(),
        bytes(dec),
        bytes(rsn),
        retry.tolist(),
        limits.tolist(),
        meta.tolist(),
        counts.tolist(),
        last_now.tolist(),
    )


def test_undeliverable_agrees() -> None:
    """The prefix lookup matches a number's leading digits of each listed length, for
    its category only, the same in both kernels."""
    pairs = [("1202", 1), ("1", 3), ("44", 1), ("123456789012345", 2)]
    region = py.region_table(prefix_key(p, c) for p, c in pairs)
    lengths = bytes(sorted({len(p) for p, _ in pairs}))
    cases = {
        ("12025550100", 1): True,
        ("12025550100", 2): False,
        ("12035550100", 1): False,
        ("12035550100", 3): True,
        ("120", 1): False,
        ("447700900123", 1): True,
        ("4", 1): False,
        ("123456789012345", 2): True,
        ("12345678901234", 2): False,
        ("2025550100", 1): False,
    }
    for (number, cat), want in cases.items():
        key = recipient_key(number)
        assert py.undeliverable(key, cat, region, lengths) is want, (number, cat)
        assert compiled.undeliverable(key, cat, region, lengths) is want, (number, cat)
        assert py.undeliverable(key, cat, array("Q"), b"") is False
        assert compiled.undeliverable(key, cat, array("Q"), b"") is False


@pytest.mark.parametrize("seed", range(40))
def test_prepare_agrees(seed: int) -> None:
    assert _prepare(py, seed) == _prepare(compiled, seed)


def _finish(mod: ModuleType, seed: int) -> tuple[Any, ...]:
    rng = random.Random(seed)
    n, k, nrows = rng.randrange(1, 40), rng.randrange(1, 4), 0
    nrows = rng.randrange(0, n + 1)
    rows = array("i", sorted(rng.sample(range(n), nrows)))
    batch = DecisionBatch()
    for _ in range(nrows):
        batch.add(
            rng.randrange(1, 1 << 45),
            rng.randrange(3),
            rng.randrange(4),
            recipient_key(str(rng.randrange(1, 10**15))),
            rng.choice([0, 1, 32, 8, 33]),
            rng.choice([50, (1 << 62) - 1]),
            rng.randrange(1, 1 << 40),
        )
    batch.prepare_outputs()
    for j in range(nrows):
        d = rng.choice([1, 1, 2, 3])
        batch.decision[j] = d
        batch.reason[j] = 1 if d == 1 else rng.choice([3, 6, 7, 8, 9, 10, 11, 12])
        batch.retry_at[j] = rng.randrange(1 << 45) if d == 2 else 0
        batch.counted[j] = rng.randrange(2) if d == 1 else 0
        batch.used[j] = rng.randrange(300)
        batch.prev_counted[j] = rng.choice([NEVER, rng.randrange(1 << 45)])
    row_eco = array("q", [rng.choice([0, 0, 5_000]) for _ in range(nrows)])
    sidx = array("I", [rng.randrange(k) for _ in range(n)])
    s_restricted = array("q", [rng.choice([0, 9_000]) for _ in range(k)])
    s_qblock = bytearray(rng.randrange(2) for _ in range(k))
    z4, z8 = bytes(4 * n), bytes(8 * n)
    dec, rsn, cnt = bytearray(n), bytearray(n), bytearray(n)
    retry, limits, used, meta = array("q", z8), array("q", z8), array("q", z8), array("i", z4)
    tickets = [""] * n
    keys = [rng.choice(["", "k1", "ключ-é"]) for _ in range(n)] if rng.random() < 0.5 else []
    kinds = bytes(rng.choice([1, 2]) for _ in range(n))
    cats = bytes(rng.randrange(1, 5) for _ in range(n))
    templates = ["promo", "квитанция", "t" * 512]
    tidx = array("I", [rng.randrange(len(templates) + 1) for _ in range(n)])
    k0, k1 = rng.randrange(1 << 64), rng.randrange(1 << 64)
    journal: list[bytes] | None = [] if rng.random() < 0.7 else None
    counts = array("q", bytes(8 * 16 * k))
    counted_rows = array("i", bytes(4 * nrows))
    ret = mod.finish(
        batch,
        rows,
        row_eco,
        sidx,
        s_restricted,
        s_qblock,
        META,
        dec,
        rsn,
        cnt,
        retry,
        limits,
        used,
        meta,
        tickets,
        keys,
        kinds,
        cats,
        tidx,
        templates,
        k0,
        k1,
        journal,
        counts,
        counted_rows,
    )
    assert type(ret) is Finished
    return (
        ret,
        bytes(dec),
        bytes(rsn),
        bytes(cnt),
        retry.tolist(),
        limits.tolist(),
        used.tolist(),
        meta.tolist(),
        tickets,
        keys,
        journal,
        counts.tolist(),
        counted_rows.tolist(),
    )


@pytest.mark.parametrize("seed", range(40))
def test_finish_agrees(seed: int) -> None:
    assert _finish(py, seed) == _finish(compiled, seed)


def test_tally_agrees() -> None:
    rng = random.Random(5)
    dec = bytes(rng.randrange(4) for _ in range(500))
    rsn = bytes(rng.randrange(14) for _ in range(500))
    a, b = [0] * 64, [0] * 64
    py.tally(dec, rsn, a)
    compiled.tally(dec, rsn, b)
    assert a == b and sum(a) == 500


@pytest.mark.parametrize("values", [[], [5], [3, -1, 9, 9, 0], [-(1 << 63), (1 << 63) - 1]])
def test_time_bounds_agree(values: list[int]) -> None:
    at = array("q", values)
    assert py.time_bounds(at) == compiled.time_bounds(at)
    assert py.time_bounds(at) == ((min(values), max(values)) if values else (0, 0))


def _key_tables(rng: random.Random) -> tuple[Any, ...]:
    """A batch's size, senders (one listed twice), keys, sender and request columns
    (all a KeyColumns holds but the key tables) and the senders' key tables, whose
    entries are bound to requests like the batch's (or not)."""
    n = rng.choice([0, 1, 8, 60])
    senders = ["s0", "s1", "s0", "s2"]  # "s0" twice: one sender at two indexes
    sidx = array("I", (rng.randrange(len(senders)) for _ in range(n)))
    pool = ["", "", "k1", "k2", *(f"k{rng.randrange(10**6)}" for _ in range(4))]
    keys = [rng.choice(pool) for _ in range(n)]
    rkeys = array("Q", (recipient_key(f"491700000{rng.randrange(3)}") for _ in range(n)))
    kinds = bytes(rng.choice([1, 1, 1, 2]) for _ in range(n))
    cats = bytes(rng.choice([1, 1, 1, 2, 4]) for _ in range(n))
    templates = ["promo", "promo", "other"]  # the same template at two indexes
    tidx = array("I", (rng.choice([1, 1, 2, 3, 0]) for _ in range(n)))
    tables: dict[str, dict[str, Any]] = {"s0": {}, "s1": {}}
    for s, table in tables.items():
        for k in ("k1", "k2", "k9"):
            if rng.random() < 0.4:
                rkey = recipient_key(f"491700000{rng.randrange(3)}")
                bound = records.bind(rkey, rng.choice([1, 1, 2]), rng.choice([1, 1, 4]))
                old = rng.random() < 0.2  # an entry from before keys were bound
                table[k] = (
                    f"ticket-{s}-{k}",
                    rng.random() < 0.5,
                    250,
                    rng.randrange(250),
                    rng.choice([60, 120, 500]),
                    rkey if old else bound,
                    None if old else rng.choice(["promo", "other", ""]),
                )
    return n, senders, keys, (sidx, senders), (rkeys, kinds, cats, tidx, templates), tables


@pytest.mark.parametrize("seed", range(120))
def test_repeated_keys_agree(seed: int) -> None:
    outcomes = []
    for mod in (compiled, py):
        rng = random.Random(seed)
        n, senders, keys, who, what, tables = _key_tables(rng)
        idems = [tables.get(s) for s in senders]  # "s2": an unknown sender
        at = array("q", (rng.choice([0, 50, 100, 150]) for _ in range(n))) if seed % 2 else None
        cols = KeyColumns(keys, *who, idems, *what)
        got = mod.repeated_keys(cols, seed % 3 == 0, at, 120)
        assert type(got) is KeyCheck
        outcomes.append((got, tables))
    assert outcomes[0] == outcomes[1]


def test_repeated_keys_find_each_kind_of_conflict() -> None:
    """Against a remembered key (unexpired) and between items of the batch."""
    r0, r1 = recipient_key("4917000000"), recipient_key("4917000001")
    entry = ("t", True, 250, 1, 100, records.bind(r0, 1, 1), "promo")
    for mod in (compiled, py):

        def check(
            rkeys: list[int],
            kinds: bytes,
            cats: bytes,
            tidx: list[int],
            at: int,
            mod: ModuleType = mod,
        ) -> tuple[Any, ...]:
            n = len(rkeys)
            return tuple(
                mod.repeated_keys(
                    KeyColumns(
                        ["k"] * n,
                        array("I", [0] * n),
                        ["s0"],
                        [{"k": entry}],
                        array("Q", rkeys),
                        kinds,
                        cats,
                        array("I", tidx),
                        ["promo", "other", "promo"],
                    ),
                    False,
                    None,
                    at,
                )
            )

        assert check([r0], b"\x01", b"\x01", [1], 99)[0] == -1  # the same request
        assert check([r0], b"\x01", b"\x01", [3], 99)[0] == -1  # same text, other index
        assert check([r1], b"\x01", b"\x01", [1], 99)[0] == 0  # another recipient
        assert check([r0], b"\x02", b"\x01", [1], 99)[0] == 0  # another kind
        assert check([r0], b"\x01", b"\x02", [1], 99)[0] == 0  # another category
        assert check([r0], b"\x01", b"\x01", [2], 99)[0] == 0  # another template
        bad, _, _, repeated = check([r1, r1, r0], b"\x01" * 3, b"\x01" * 3, [1] * 3, 100)
        assert (bad, repeated) == (2, False)  # expired at 100: only the batch's own items
        bad, _, _, repeated = check([r1, r1], b"\x01" * 2, b"\x01" * 2, [1, 3], 100)
        assert (bad, repeated) == (-1, True)


@pytest.mark.parametrize("seed", range(30))
def test_remember_keys_agree(seed: int) -> None:
    outcomes = []
    for mod in (compiled, py):
        rng = random.Random(seed)
        n, senders, keys, who, what, tables = _key_tables(rng)
        idems = [tables.setdefault(s, {}) for s in senders]
        rows = array("i", sorted(rng.sample(range(n), rng.randrange(n + 1))))
        row_now = array("q", (1000 + 10 * j for j in range(len(rows))))
        tickets = [rng.choice(["", f"t{i}"]) for i in range(n)]
        counted = bytearray(rng.randrange(2) for _ in range(n))
        limit = array("q", (rng.randrange(1, 10**6) for _ in range(n)))
        used = array("q", (rng.randrange(10**6) for _ in range(n)))
        order: collections.deque[tuple[int, str, str]] = collections.deque()
        mod.remember_keys(
            KeyColumns(keys, *who, idems, *what),
            rows,
            row_now,
            500,
            order,
            tickets,
            counted,
            limit,
            used,
        )
        outcomes.append((tables, list(order)))
    assert outcomes[0] == outcomes[1]
    for table in outcomes[0][0].values():
        for entry in table.values():
            assert len(entry) == 7


@pytest.mark.parametrize("seed", range(10))
def test_alias_keys_agree(seed: int) -> None:
    from tiergate.policy.aliases import alias_table

    rng = random.Random(seed)
    ids = [recipient_key(f"US.{rng.randrange(10**20)}") for _ in range(rng.randrange(0, 30))]
    phones = [recipient_key(str(rng.randrange(10**10, 10**12))) for _ in ids]
    mapped = dict(zip(ids[: len(ids) // 2], phones, strict=False))
    table = alias_table(mapped.items())
    keys = array(
        "Q", [rng.choice([*ids, *phones, recipient_key("1")]) for _ in range(50)] if ids else []
    )
    outs = []
    for mod in (py, compiled):
        out = array("Q", keys)
        outs.append((mod.alias_keys(out, table), out.tolist()))
    assert outs[0] == outs[1]
    assert outs[0][1] == [mapped.get(k, k) for k in keys]
    assert outs[0][0] == sum(k in mapped for k in keys)


def test_an_alias_table_learned_one_by_one_is_the_one_built_at_once() -> None:
    from tiergate.policy.aliases import alias_table, learn
    from tiergate.policy.state import PolicyState

    st = PolicyState.__new__(PolicyState)
    st.aliases, st.alias_table = {}, array("Q")
    for n in range(300):
        assert learn(st, f"+4477009{n:05d}", f"GB.{n}")
    assert not learn(st, "+447700900000", "GB.0")  # known: no change
    assert learn(st, "+447700999999", "GB.0")  # a newer phone number for the id
    keys = array("Q", [recipient_key(f"GB.{n}") for n in range(300)])
    whole = array("Q", keys)
    assert compiled.alias_keys(keys, st.alias_table) == 300
    assert py.alias_keys(whole, alias_table(st.aliases.items())) == 300
    assert keys == whole
    assert keys[0] == recipient_key("447700999999") and keys[1] == recipient_key("447700900001")

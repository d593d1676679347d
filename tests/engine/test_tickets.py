"""Ticket MACs: SipHash-2-4 against the paper's test vectors, the compiled and the
pure-Python ticket encoders against each other, and what decoding refuses."""

from __future__ import annotations

import random
from types import ModuleType

import pytest
from conftest import Twin

from tiergate.engine import NEVER
from tiergate.engine import columns as py
from tiergate.engine.tickets import (
    decode_ticket,
    encode_ticket,
    key_words,
    siphash24,
    ticket_fields,
)

compiled: ModuleType | None
try:
    import tiergate._native.columns as compiled
except ImportError:  # the pure-Python build
    compiled = None

#: SipHash-2-4 with key 00 01 .. 0f of the messages 00, 00 01, .. 00 01 .. 3e (lengths
#: 0 to 63): the reference implementation's ``vectors_sip64`` (the paper's Appendix A
#: works the 15-byte one, a129ca6149be45e5).
VECTORS = [
    0x726FDB47DD0E0E31, 0x74F839C593DC67FD, 0x0D6C8009D9A94F5A, 0x85676696D7FB7E2D,
    0xCF2794E0277187B7, 0x18765564CD99A68D, 0xCBC9466E58FEE3CE, 0xAB0200F58B01D137,
    0x93F5F5799A932462, 0x9E0082DF0BA9E4B0, 0x7A5DBBC594DDB9F3, 0xF4B32F46226BADA7,
    0x751E8FBC860EE5FB, 0x14EA5627C0843D90, 0xF723CA908E7AF2EE, 0xA129CA6149BE45E5,
    0x3F2ACC7F57C29BDB, 0x699AE9F52CBE4794, 0x4BC1B3F0968DD39C, 0xBB6DC91DA77961BD,
    0xBED65CF21AA2EE98, 0xD0F2CBB02E3B67C7, 0x93536795E3A33E88, 0xA80C038CCD5CCEC8,
    0xB8AD50C6F649AF94, 0xBCE192DE8A85B8EA, 0x17D835B85BBB15F3, 0x2F2E6163076BCFAD,
    0xDE4DAAACA71DC9A5, 0xA6A2506687956571, 0xAD87A3535C49EF28, 0x32D892FAD841C342,
    0x7127512F72F27CCE, 0xA7F32346F95978E3, 0x12E0B01ABB051238, 0x15E034D40FA197AE,
    0x314DFFBE0815A3B4, 0x027990F029623981, 0xCADCD4E59EF40C4D, 0x9ABFD8766A33735C,
    0x0E3EA96B5304A7D0, 0xAD0C42D6FC585992, 0x187306C89BC215A9, 0xD4A60ABCF3792B95,
    0xF935451DE4F21DF2, 0xA9538F0419755787, 0xDB9ACDDFF56CA510, 0xD06C98CD5C0975EB,
    0xE612A3CB9ECBA951, 0xC766E62CFCADAF96, 0xEE64435A9752FE72, 0xA192D576B245165A,
    0x0A8787BF8ECB74B2, 0x81B3E73D20B49B6F, 0x7FA8220BA3B2ECEA, 0x245731C13CA42499,
    0xB78DBFAF3A8D83BD, 0xEA1AD565322A1A0B, 0x60E61C23A3795013, 0x6606D7E446282B93,
    0x6CA4ECB15C5F91E1, 0x9F626DA15C9625F3, 0xE51B38608EF25F57, 0x958A324CEB064572,
]  # fmt: skip
KEY = bytes(range(16))


def test_siphash_matches_the_papers_vectors(twin: Twin) -> None:
    assert siphash24 is py.siphash24
    for n, want in enumerate(VECTORS):
        assert twin.kernels.siphash24(KEY, bytes(range(n))) == want, n


def test_siphash_takes_only_a_128_bit_key(twin: Twin) -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        twin.kernels.siphash24(KEY[:15], b"")


def _numbers(rng: random.Random) -> tuple[int, ...]:
    return (
        rng.choice([1, rng.randrange(1, 1 << 64)]),
        rng.choice([0, rng.randrange(1 << 31)]),
        rng.randrange(1, 1 << 54),
        rng.choice([NEVER, rng.randrange(1 << 45), (1 << 62) - 1]),
        rng.choice([0, rng.randrange(1 << 63)]),
    )


def test_the_mac_is_siphash_of_the_five_numbers() -> None:
    k0, k1 = key_words(KEY)
    rng = random.Random(1)
    for _ in range(50):
        tid, number, rkey, prev, slot = _numbers(rng)
        words = b"".join(v.to_bytes(8, "little") for v in (tid, number, rkey, prev - NEVER, slot))
        mac = encode_ticket(k0, k1, tid, number, rkey, prev, slot).rsplit(".", 1)[1]
        assert mac == f"{siphash24(KEY, words):016x}"


@pytest.mark.skipif(compiled is None, reason="no compiled engine")
def test_compiled_and_pure_tickets_are_byte_identical() -> None:
    assert compiled is not None
    rng = random.Random(2)
    for _ in range(500):
        k0, k1 = rng.randrange(1 << 64), rng.randrange(1 << 64)
        numbers = _numbers(rng)
        got = compiled.encode_ticket(k0, k1, *numbers)
        assert got == encode_ticket(k0, k1, *numbers)
        assert decode_ticket(got, k0, k1, compiled.encode_ticket) == numbers


def test_decoding_accepts_only_the_exact_ticket_of_its_key() -> None:
    k0, k1 = key_words(KEY)
    numbers = (0x1F, 3, 0x2C00039EED0207, NEVER + 17, 5)
    ticket = encode_ticket(k0, k1, *numbers)
    assert decode_ticket(ticket, k0, k1) == numbers
    other = key_words(bytes(16))
    assert decode_ticket(ticket, *other) is None
    parts = ticket.split(".")
    for i in range(6):
        for change in (lambda p: format(int(p, 16) + 1, "x"), lambda p: "0" + p, str.upper):
            altered = list(parts)
            altered[i] = change(parts[i])
            if altered != parts:
                assert decode_ticket(".".join(altered), k0, k1) is None, altered
    for bad in (
        ".".join(parts[:5]),  # before MACs
        ".".join(parts[:4]),  # before slot stamps
        ticket + ".0",
        ticket + " ",
        "",
        "x",
        ticket.replace(".", ".+", 1),
        ticket.replace("1", "١"),
    ):
        assert decode_ticket(bad, k0, k1) is None, bad


def test_ticket_fields_read_every_form_unchecked() -> None:
    """For records already checked when written: replayed journal, snapshots."""
    k0, k1 = key_words(KEY)
    numbers = (9, 0, 0x2C00039EED0207, NEVER, 4)
    ticket = encode_ticket(k0, k1, *numbers)
    assert ticket_fields(ticket) == numbers
    assert ticket_fields(ticket.rsplit(".", 1)[0]) == numbers
    four = ".".join(ticket.split(".")[:4])
    assert ticket_fields(four) == (*numbers[:4], 0)
    assert ticket_fields("0.0.1.0.0") is None  # ticket id 0 is never handed out

"""Hypothesis strategies for the fuzz targets: valid-looking and hostile protobuf
messages of every RPC, raw bytes that may or may not be those messages, and Meta
webhook bodies.

Strings that stand for something the running sidecar handed out are written as
placeholders and filled in when the step runs (see ``fuzz_session.resolve``):
``@ticket:N`` is the N-th ticket issued so far (modulo their number),
``@forged:N`` the same with its first field altered. Times are absolute Unix ms
around ``T0``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from google.protobuf.message import Message
from hypothesis import strategies as st
from server_harness import T0

from tiergate.server.convert import MAX_AT_UNIX_MS
from tiergate.v1 import admission_pb2 as pb
from tiergate.webhooks.signature import sign

M = TypeVar("M", bound=Message)

MINUTE = 60_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR

# --- the sidecar every target runs against ---------------------------------------------

SENDER = "100000000000001"  # portfolio-a, TIER_250 (10 recipients after the 4 % headroom)
SIBLING = "100000000000003"  # portfolio-a too: shares SENDER's limit
OTHER = "100000000000002"  # portfolio-b, TIER_2K (80 after the headroom)
BANNED = "100000000000004"  # portfolio-c, BANNED from the start
KNOWN_SENDERS = (SENDER, SIBLING, OTHER, BANNED)
PORTFOLIOS = {SENDER: "portfolio-a", SIBLING: "portfolio-a", OTHER: "portfolio-b"}
PORTFOLIOS[BANNED] = "portfolio-c"
WABAS = {SENDER: "waba-a", SIBLING: "waba-a", OTHER: "waba-b", BANNED: "waba-c"}
DISPLAY = {
    SENDER: "15550100001",
    SIBLING: "15550100003",
    OTHER: "15550100002",
    BANNED: "15550100004",
}
# Templates declared in the config: approved, paused until far ahead, disabled.
TEMPLATE_OK = "t-approved"
TEMPLATE_PAUSED = "t-paused"
TEMPLATE_DISABLED = "t-disabled"
PAUSED_UNTIL = MAX_AT_UNIX_MS  # paused for good: under either clock
TEMPLATES = (TEMPLATE_OK, TEMPLATE_PAUSED, TEMPLATE_DISABLED, "t-unknown")
WEBHOOK_SECRET = "fuzz-app-secret"
MAX_BATCH = 8

RECIPIENTS = tuple(f"1555000{i:04d}" for i in range(14))
PROBE_RECIPIENT = "19990000001"  # never used by any step: a dry-run probe of the limit

# --- hostile values ----------------------------------------------------------------------

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
UINT32_MAX = 2**32 - 1

HOSTILE_TEXT = (
    "",
    " ",
    "\x00",
    "\t\r\n",
    "é",
    "😀",
    "\u202e",
    "\ufeff15550000001",
    "١٢٣٤٥٦٧٨٩٠",  # Arabic-Indic digits: str.isdigit() is True, not ASCII
    "１５５５０",  # full-width digits
    "+",
    "++15550000001",
    "+-1",
    "-1",
    "0",
    "0" * 15,
    "9" * 15,
    "9" * 16,
    "1" * 40,
    "15550000001\x00",
    " 15550000001",
    "15550000001 ",
    "1e10",
    "0x1F",
    "US.AbCdEf1234567890",  # business-scoped user ids (BSUID)
    "US.ENT.abc123XYZ",
    "BR." + "a" * 128,
    "IN." + "Z" * 129,
    "a" * 16,
    "a" * 17,
    "a" * 32,
    "a" * 33,
    "a" * 128,
    "a" * 129,
    "a" * 256,
    "a" * 257,
    "a" * 512,
    "a" * 513,
    "x" * 5000,
    "💥" * 200,
    "%s%n%x",
    "../../../etc/passwd",
    "null",
    "{}",
    "TIER_250",
    "TIER_UNLIMITED",
    "tier_250",
    "TIER_",
    "1000",
    "-5",
    "9" * 30,
    "1.2.3.4.5",
    "1.0.1.0.0",
    "ffffffffffffffff.0.1.0.1",
)

text_hostile = st.one_of(
    st.sampled_from(HOSTILE_TEXT),
    st.text(max_size=24),
    st.text(min_size=120, max_size=600),
)


def texts(*valid: str, hostile: float = 0.3) -> st.SearchStrategy[str]:
    """One of ``valid`` mostly, a hostile string otherwise."""
    if not valid:
        return text_hostile
    weight = max(1, round(len(valid) * hostile / (1 - hostile)))
    return st.one_of(st.sampled_from(valid), *([text_hostile] * weight))


FUTURE_25H = T0 + 25 * HOUR
HOSTILE_TIMES = (
    0,
    1,
    -1,
    -T0,
    INT64_MIN,
    INT64_MAX,
    INT32_MAX,
    MAX_AT_UNIX_MS,
    MAX_AT_UNIX_MS + 1,
    T0 - DAY,
    T0 - 1,
    FUTURE_25H,
    T0 + 7 * DAY + HOUR,
    10**12,
)

#: A time a valid request carries: within the first hours after T0.
times_valid = st.integers(T0, T0 + 6 * HOUR)
times_hostile = st.one_of(
    st.sampled_from(HOSTILE_TIMES),
    st.integers(INT64_MIN, INT64_MAX),
    st.integers(T0 - 2 * DAY, T0 + 2 * DAY),
)
times = st.one_of(times_valid, times_valid, st.just(0), times_hostile)

int32s = st.one_of(
    st.sampled_from(
        [0, 1, -1, INT32_MAX, INT32_MIN, 368, 130429, 131026, 131047, 131049, 131050, 131056]
    ),
    st.integers(INT32_MIN, INT32_MAX),
)
uint32s = st.one_of(st.sampled_from([0, 1, 2, 3, 7, UINT32_MAX]), st.integers(0, UINT32_MAX))


def enums(valid: Sequence[int]) -> st.SearchStrategy[int]:
    """Enum numbers: valid ones mostly; unknown, negative and extreme int32 values too."""
    return st.one_of(
        st.sampled_from(list(valid)),
        st.sampled_from(list(valid)),
        st.sampled_from([0, -1, 99, INT32_MAX, INT32_MIN]),
        st.integers(INT32_MIN, INT32_MAX),
    )


sender_ids_valid = st.one_of(
    st.sampled_from(KNOWN_SENDERS),
    st.sampled_from(KNOWN_SENDERS),
    st.sampled_from(KNOWN_SENDERS),
    st.sampled_from(["100000000000009", "999"]),  # well-formed, never created
)
sender_ids = st.one_of(sender_ids_valid, sender_ids_valid, text_hostile)
recipients_valid = st.one_of(
    st.sampled_from(RECIPIENTS), st.sampled_from(RECIPIENTS).map(lambda r: "+" + r)
)
recipients = st.one_of(recipients_valid, recipients_valid, text_hostile)
templates = texts(*TEMPLATES)
keys_valid = st.one_of(st.just(""), st.sampled_from(["key-0", "key-1", "key-2"]))
keys = st.one_of(keys_valid, keys_valid, text_hostile)
tickets_valid = st.integers(0, 30).map(lambda i: f"@ticket:{i}")
#: A ticket that was issued, with its first field altered.
tickets_forged = st.integers(0, 30).map(lambda i: f"@forged:{i}")
tickets = st.one_of(tickets_valid, tickets_valid, tickets_forged, st.just(""), text_hostile)


@st.composite
def messages(
    draw: st.DrawFn,
    kind: type[M],
    valid: dict[str, st.SearchStrategy[Any]],
    hostile: dict[str, st.SearchStrategy[Any]],
) -> M:
    """A ``kind`` message of valid-looking fields, none, one or several of them hostile."""
    fields = {name: draw(strategy) for name, strategy in valid.items()}
    n = draw(st.sampled_from([0, 0, 0, 1, 1, 2, 3, len(hostile)]))
    for name in draw(st.permutations(sorted(hostile)))[:n]:
        fields[name] = draw(hostile[name])
    return kind(**fields)


def admit_requests(*, valid_only: bool = False) -> st.SearchStrategy[pb.AdmitRequest]:
    valid = {
        "sender_id": st.sampled_from(KNOWN_SENDERS) if valid_only else sender_ids_valid,
        "recipient": recipients_valid,
        "kind": st.sampled_from([pb.TEMPLATE, pb.TEMPLATE, pb.FREE_FORM]),
        "category": st.sampled_from([pb.MARKETING, pb.UTILITY, pb.AUTHENTICATION]),
        "template_id": st.sampled_from(TEMPLATES),
        "idempotency_key": keys_valid,
        "at_unix_ms": st.one_of(times_valid, st.just(0)),
    }
    if valid_only:
        return messages(pb.AdmitRequest, valid, {})
    valid["dry_run"] = st.sampled_from([False, False, False, True])
    hostile = {
        "sender_id": text_hostile,
        "recipient": text_hostile,
        "kind": enums([0, 1, 2]),
        "category": enums([0, 1, 2, 3, 4]),
        "template_id": text_hostile,
        "idempotency_key": text_hostile,
        "at_unix_ms": times_hostile,
    }
    return messages(pb.AdmitRequest, valid, hostile)


def batch_requests() -> st.SearchStrategy[pb.AdmitBatchRequest]:
    items = st.one_of(admit_requests(), admit_requests(valid_only=True))
    return st.builds(
        pb.AdmitBatchRequest,
        requests=st.one_of(
            st.lists(items, max_size=MAX_BATCH),
            st.lists(items, min_size=MAX_BATCH + 1, max_size=MAX_BATCH + 2),
        ),
    )


def stream_requests() -> st.SearchStrategy[list[pb.AdmitRequest]]:
    items = st.one_of(admit_requests(), admit_requests(valid_only=True))
    return st.lists(items, max_size=10)


@st.composite
def columns_requests(draw: st.DrawFn) -> pb.AdmitColumnsRequest:
    """Columns mostly of consistent lengths and indexes; sometimes off by one or out of range."""
    n = draw(st.integers(0, MAX_BATCH + 1))
    senders = draw(st.lists(st.one_of(sender_ids_valid, sender_ids), min_size=1, max_size=3))
    tpls = draw(st.lists(templates, max_size=3))
    hostile = draw(st.integers(0, 3)) == 0

    def length(k: int) -> int:
        return draw(st.sampled_from([k, k, max(0, k - 1), k + 1])) if hostile else k

    def column(strategy: st.SearchStrategy[Any], k: int) -> list[Any]:
        return draw(st.lists(strategy, min_size=k, max_size=k))

    def pick(valid: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> Any:
        return st.one_of(valid, valid, valid, bad) if hostile else valid

    kinds = column(pick(st.sampled_from([1, 1, 2]), st.integers(0, 255)), length(n))
    cats = column(pick(st.sampled_from([1, 2, 3]), st.integers(0, 255)), length(n))
    return pb.AdmitColumnsRequest(
        senders=senders,
        sender_index=column(pick(st.integers(0, len(senders) - 1), uint32s), length(n)),
        recipients=column(pick(recipients_valid, text_hostile), n),
        kinds=bytes(kinds),
        categories=bytes(cats),
        templates=tpls,
        template_index=column(pick(st.integers(min(1, len(tpls)), len(tpls)), uint32s), length(n)),
        idempotency_keys=column(pick(keys_valid, text_hostile), draw(st.sampled_from([0, n]))),
        at_unix_ms=column(pick(times_valid, times_hostile), draw(st.sampled_from([0, n]))),
        dry_run=draw(st.sampled_from([False, False, False, True])),
    )


def inbound_messages() -> st.SearchStrategy[pb.InboundMessage]:
    return messages(
        pb.InboundMessage,
        {
            "sender_id": sender_ids_valid,
            "recipient": recipients_valid,
            "at_unix_ms": st.one_of(times_valid, st.just(0)),
            "entry_point": st.sampled_from([0, 1, 2, 3]),
            "message_id": st.one_of(st.just(""), st.integers(0, 9).map(lambda i: f"wamid.in-{i}")),
        },
        {
            "sender_id": text_hostile,
            "recipient": text_hostile,
            "at_unix_ms": times_hostile,
            "entry_point": enums([1, 2, 3]),
            "message_id": text_hostile,
        },
    )


def send_results() -> st.SearchStrategy[pb.SendResult]:
    return messages(
        pb.SendResult,
        {
            "ticket": st.one_of(tickets_valid, tickets_valid, tickets_forged, st.just("")),
            "sender_id": st.one_of(st.just(""), sender_ids_valid),
            "recipient": st.one_of(st.just(""), recipients_valid),
            "idempotency_key": keys_valid,
            "status": st.sampled_from([1, 2, 3, 4, 4, 4]),
            "meta_error_code": st.sampled_from([0, 131026, 130429, 131047, 131049, 131050]),
            "at_unix_ms": st.one_of(times_valid, st.just(0)),
            "message_id": st.one_of(st.just(""), st.integers(0, 9).map(lambda i: f"wamid.out-{i}")),
        },
        {
            "ticket": tickets,
            "sender_id": text_hostile,
            "recipient": text_hostile,
            "idempotency_key": text_hostile,
            "status": enums([0, 1, 2, 3, 4]),
            "meta_error_code": int32s,
            "at_unix_ms": times_hostile,
            "message_id": text_hostile,
        },
    )


def opt_outs() -> st.SearchStrategy[pb.OptOut]:
    return messages(
        pb.OptOut,
        {
            "recipient": recipients_valid,
            "portfolio_id": st.sampled_from(["", "portfolio-a", "portfolio-b", "portfolio-z"]),
            "sender_id": st.one_of(st.just(""), sender_ids_valid),
            "at_unix_ms": st.one_of(times_valid, st.just(0)),
            "opted_out": st.booleans(),
        },
        {
            "recipient": text_hostile,
            "portfolio_id": text_hostile,
            "sender_id": text_hostile,
            "at_unix_ms": times_hostile,
        },
    )


TIERS = ("TIER_50", "TIER_250", "TIER_1K", "TIER_2K", "TIER_10K", "TIER_100K", "TIER_UNLIMITED")


@st.composite
def sender_updates(draw: st.DrawFn) -> pb.SenderUpdate:
    """Upserts of known, new and hostile senders; each optional field set or unset."""
    new_ids = st.sampled_from(["200000000000001", "200000000000002"])
    fields: dict[str, Any] = {
        "sender_id": draw(st.one_of(sender_ids_valid, new_ids, new_ids, text_hostile)),
        "at_unix_ms": draw(times),
    }
    optional: dict[str, st.SearchStrategy[Any]] = {
        "portfolio_id": texts("portfolio-a", "portfolio-b", "portfolio-new"),
        "waba_id": texts("waba-a", "waba-b"),
        "display_phone_number": texts("+15550100009", "15550100001", "+1 555 010 0008"),
        "verified": st.booleans(),
        "tier": texts(*TIERS, "500", "2000"),
        "quality": enums([1, 2, 3, 4]),
        "status": enums([1, 2, 3, 4, 5]),
        "throughput_mps": int32s,
        "coexistence": st.booleans(),
        "registered_at_unix_ms": times,
        "restricted_until_unix_ms": times,
    }
    for name, strategy in optional.items():
        if draw(st.integers(0, 3)) == 0:
            fields[name] = draw(strategy)
    return pb.SenderUpdate(**fields)


def template_updates() -> st.SearchStrategy[pb.TemplateUpdate]:
    return messages(
        pb.TemplateUpdate,
        {
            "template_id": st.sampled_from([*TEMPLATES, "t-new"]),
            "template_name": st.sampled_from(["", "approved_name", "paused_name"]),
            "status": st.sampled_from([1, 2, 3, 4, 5]),
            "paused_until_unix_ms": st.one_of(st.just(0), times_valid),
            "at_unix_ms": st.one_of(times_valid, st.just(0)),
            "waba_id": st.sampled_from(["", "waba-a", "waba-b"]),
        },
        {
            "template_id": text_hostile,
            "template_name": text_hostile,
            "status": enums([0, 1, 2, 3, 4, 5]),
            "paused_until_unix_ms": times_hostile,
            "at_unix_ms": times_hostile,
            "waba_id": text_hostile,
        },
    )


FEEDBACK_EVENTS: dict[str, Callable[[], st.SearchStrategy[Any]]] = {
    "inbound_message": inbound_messages,
    "send_result": send_results,
    "opt_out": opt_outs,
    "sender_update": sender_updates,
    "template_update": template_updates,
}


def feedback_requests(event: str) -> st.SearchStrategy[pb.RecordFeedbackRequest]:
    """RecordFeedback with ``event`` set (or, now and then, no event at all)."""
    one = FEEDBACK_EVENTS[event]().map(lambda m: pb.RecordFeedbackRequest(**{event: m}))
    return st.one_of(one, one, one, one, one, one, one, st.just(pb.RecordFeedbackRequest()))


def state_requests() -> st.SearchStrategy[pb.GetSenderStateRequest]:
    return messages(
        pb.GetSenderStateRequest,
        {"sender_id": sender_ids_valid, "at_unix_ms": st.one_of(times_valid, st.just(0))},
        {"sender_id": text_hostile, "at_unix_ms": times_hostile},
    )


def plan_requests() -> st.SearchStrategy[pb.PlanCampaignRequest]:
    return messages(
        pb.PlanCampaignRequest,
        {
            "sender_id": sender_ids_valid,
            "template_id": st.sampled_from(TEMPLATES),
            "category": st.sampled_from([pb.MARKETING, pb.UTILITY, pb.AUTHENTICATION]),
            "recipients": st.lists(recipients_valid, max_size=12),
            "start_at_unix_ms": st.one_of(times_valid, st.just(0)),
            "at_unix_ms": st.one_of(times_valid, st.just(0)),
            "more_follow": st.booleans(),
        },
        {
            "sender_id": text_hostile,
            "template_id": text_hostile,
            "category": enums([0, 1, 2, 3, 4]),
            "recipients": st.lists(recipients, max_size=6),
            "start_at_unix_ms": times_hostile,
            "at_unix_ms": times_hostile,
            "continuation": text_hostile,
        },
    )


# --- raw bytes ---------------------------------------------------------------------------


def varint(v: int) -> bytes:
    v &= (1 << 64) - 1
    out = bytearray()
    while v >= 0x80:
        out.append(v & 0x7F | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with a protobuf-aware or blind change: truncated, bytes flipped or inserted,
    an unknown or wrongly typed field, an overlong varint or length, a repeated field."""
    how = draw(
        st.sampled_from(
            [
                "truncate",
                "flip",
                "insert",
                "unknown-field",
                "wrong-wire-type",
                "huge-length",
                "overlong-varint",
                "repeat",
                "group",
            ]
        )
    )
    if how == "truncate" and data:
        return data[: draw(st.integers(0, len(data) - 1))]
    if how == "flip" and data:
        i = draw(st.integers(0, len(data) - 1))
        return data[:i] + bytes([data[i] ^ draw(st.integers(1, 255))]) + data[i + 1 :]
    if how == "insert":
        i = draw(st.integers(0, len(data)))
        return data[:i] + draw(st.binary(min_size=1, max_size=8)) + data[i:]
    field = draw(st.integers(1, 20))
    if how == "unknown-field":
        tag = draw(st.sampled_from([99, 1000, 536870911]))
        return data + varint(tag << 3) + varint(draw(st.integers(0, 2**64 - 1)))
    if how == "wrong-wire-type":
        return data + varint(field << 3 | draw(st.sampled_from([0, 1, 2, 5]))) + b"\x01" * 8
    if how == "huge-length":
        return data + varint(field << 3 | 2) + varint(draw(st.sampled_from([2**31, 2**63, 10**6])))
    if how == "overlong-varint":
        return data + varint(field << 3) + b"\xff" * draw(st.integers(9, 12)) + b"\x01"
    if how == "group":
        return data + varint(field << 3 | 3) + draw(st.binary(max_size=6)) + varint(field << 3 | 4)
    # repeat: the message twice (protobuf merges: the last value of a scalar wins)
    return data + data


def raw(messages: st.SearchStrategy[Message]) -> st.SearchStrategy[bytes]:
    """Bytes sent straight to a method: mutated messages, merged messages, noise."""
    serialized = messages.map(lambda m: m.SerializeToString())
    return st.one_of(
        serialized.flatmap(mutated),
        serialized.flatmap(mutated),
        st.tuples(serialized, serialized).map(lambda p: p[0] + p[1]),
        st.binary(max_size=64),
    )


# --- webhooks ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Webhook:
    body: bytes
    signature: str  # "" = none; "@sign" = the right one for the body (made when sent)
    at_unix_ms: int = 0


def _retarget(doc: object) -> object:
    """A fixture body whose ids name the fuzz sidecar's senders and recipients."""
    ids = {
        "phone_number_id": SENDER,
        "display_phone_number": DISPLAY[SENDER],
        "wa_id": RECIPIENTS[0],
        "from": RECIPIENTS[1],
        "recipient_id": RECIPIENTS[2],
    }
    if isinstance(doc, dict):
        out = {}
        for k, v in doc.items():
            if k in ids and isinstance(v, str):
                out[k] = ids[k]
            elif k == "id" and isinstance(v, str) and v.isdigit():
                out[k] = WABAS[SENDER]
            else:
                out[k] = _retarget(v)
        return out
    if isinstance(doc, list):
        return [_retarget(v) for v in doc]
    return doc


def webhook_docs() -> list[object]:
    from webhook_helpers import all_bodies  # tests/webhooks (see fuzz_session)

    return [_retarget(json.loads(b)) for b in all_bodies()]


_json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(INT64_MIN, INT64_MAX),
    st.sampled_from([0, -1, 2**64, 10**30, 1e308, -0.0, 1.5]),
    st.floats(allow_nan=False, allow_infinity=False),
    text_hostile,
    st.sampled_from([SENDER, OTHER, RECIPIENTS[0], "whatsapp_business_account", "messages"]),
)
json_values = st.recursive(
    _json_leaf,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=12,
)


def _paths(doc: object, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out.append((*prefix, k))
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out.append((*prefix, i))
            out += _paths(v, (*prefix, i))
    return out


def _replace(doc: object, path: tuple[Any, ...], value: object) -> object:
    if not path:
        return value
    if isinstance(doc, dict):
        return {k: (_replace(v, path[1:], value) if k == path[0] else v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [(_replace(v, path[1:], value) if i == path[0] else v) for i, v in enumerate(doc)]
    return doc


@st.composite
def webhook_bodies(draw: st.DrawFn) -> bytes:
    """Real and synthetic Meta payloads aimed at the fuzz senders, as they are or with a
    node replaced by a hostile value, truncated, two merged; random JSON; noise."""
    docs = webhook_docs()
    doc = draw(st.sampled_from(docs))
    how = draw(st.sampled_from(["as-is", "replace", "replace", "replace", "truncate", "json"]))
    if how == "replace":
        for _ in range(draw(st.integers(1, 3))):
            paths = _paths(doc)
            if paths:
                doc = _replace(doc, draw(st.sampled_from(paths)), draw(json_values))
    if how == "json":
        doc = draw(json_values)
    body = json.dumps(doc).encode()
    if how == "truncate":
        body = body[: draw(st.integers(0, max(0, len(body) - 1)))]
    if draw(st.integers(0, 9)) == 0:
        body = draw(st.sampled_from([b"", b"\xff\xfe", b"[" * 80 + b"]" * 80, b"{" * 5, b"nul"]))
    return body


signatures = st.one_of(
    st.just("@sign"),
    st.just("@sign"),
    st.just("@sign"),
    st.sampled_from(["", "sha256=", "sha256=" + "0" * 64, "sha1=abc", "SHA256=" + "a" * 64]),
    text_hostile,
)


def webhooks() -> st.SearchStrategy[Webhook]:
    return st.builds(Webhook, body=webhook_bodies(), signature=signatures, at_unix_ms=times)


@st.composite
def http_requests(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """(the raw bytes of an HTTP request to the webhook receiver, its body): a signed
    POST whose head is changed: a line dropped, repeated or replaced, another method,
    path or version, a wrong Content-Length, chunked coding, 100-continue, a folded
    line, bare LFs, the bytes cut short."""
    body = draw(webhook_bodies())
    lines = [
        "POST /webhook HTTP/1.1",
        "Host: tiergate",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        f"X-Hub-Signature-256: {sign(body, WEBHOOK_SECRET)}",
        "Connection: close",
    ]
    hostile_lines = st.one_of(
        st.sampled_from(
            [
                "GET /webhook HTTP/1.1",
                "PUT /webhook HTTP/1.1",
                "POST /webhook?x=1 HTTP/1.1",
                "POST /other HTTP/1.1",
                "POST http://tiergate/webhook HTTP/1.1",
                "POST /webhook HTTP/2.0",
                "POST /webhook HTTP/1.0",
                "POST  /webhook HTTP/1.1",
                "POST /web hook HTTP/1.1",
                f"Content-Length: {len(body) + 1}",
                f"Content-Length: {max(0, len(body) - 1)}",
                "Content-Length: -1",
                "Content-Length: 99999999999999999999",
                "Content-Length: 0x10",
                "Content-Length: 2000000",
                "Transfer-Encoding: chunked",
                "Expect: 100-continue",
                " folded continuation",
                "X-Hub-Signature-256: sha256=" + "0" * 64,
                "X-Hub-Signature-256:",
                "Connection: keep-alive",
                "Bad Header: x",
                ": no name",
                "no colon",
                "X-Control: a\x01b",
                "Host: a",
                "X-Long: " + "a" * 20000,
            ]
        ),
        text_hostile,
    )
    for _ in range(draw(st.integers(0, 3))):
        how = draw(st.sampled_from(["drop", "repeat", "replace", "insert"]))
        i = draw(st.integers(0, len(lines) - 1))
        if how == "drop" and len(lines) > 1:
            del lines[i]
        elif how == "repeat":
            lines.insert(i, lines[i])
        elif how == "replace":
            lines[i] = draw(hostile_lines)
        else:
            lines.insert(i, draw(hostile_lines))
    eol = draw(st.sampled_from(["\r\n", "\r\n", "\r\n", "\n"]))
    data = (eol.join(lines) + eol + eol).encode("utf-8") + body
    if draw(st.integers(0, 4)) == 0:
        data = data[: draw(st.integers(0, len(data)))]
    return data, body


def ingest_request(w: Webhook) -> pb.IngestWebhookRequest:
    """The IngestWebhook request of ``w``, signed now (for raw bytes)."""
    signature = sign(w.body, WEBHOOK_SECRET) if w.signature == "@sign" else w.signature
    return pb.IngestWebhookRequest(body=w.body, signature=signature, at_unix_ms=w.at_unix_ms)


# --- programs: valid traffic mixed with fuzz -------------------------------------------------

#: How far past the clock's latest time a valid request is stamped: mostly a little;
#: -1 sends no time at all; now and then a day and an hour (every window moves on).
offsets = st.one_of(
    st.integers(0, 2 * MINUTE),
    st.integers(0, 2 * MINUTE),
    st.integers(0, 2 * MINUTE),
    st.just(0),
    st.just(-1),
    st.just(25 * HOUR),
)
valid_steps = st.one_of(
    # a run of template sends to distinct recipients, to reach a scope's limit
    st.tuples(
        st.just("burst"),
        st.sampled_from([SENDER, SIBLING, OTHER]),
        st.integers(1, len(RECIPIENTS)),
        st.sampled_from([pb.MARKETING, pb.UTILITY]),
        st.integers(0, 2),
    ),
    st.tuples(st.just("admit"), admit_requests(valid_only=True), offsets),
    st.tuples(st.just("admit"), admit_requests(valid_only=True), offsets),
    st.tuples(st.just("admit"), admit_requests(valid_only=True), offsets),
    st.tuples(
        st.just("inbound"), st.sampled_from(KNOWN_SENDERS), recipients_valid, st.integers(0, 1000)
    ),
    st.tuples(
        st.just("fail"),
        st.integers(0, 30),
        st.sampled_from([0, 131026, 130429, 131047, 131049, 131050]),
    ),
    st.tuples(st.just("state"), st.sampled_from(KNOWN_SENDERS)),
)


def fuzz_steps(
    rpc: str, messages: st.SearchStrategy[Any], raw_bytes: st.SearchStrategy[Any] | None = None
) -> st.SearchStrategy[tuple[Any, ...]]:
    """Steps sending ``rpc`` a fuzzed message, or raw bytes (``raw_bytes``, by default
    ``raw(messages)``)."""
    as_bytes = raw(messages) if raw_bytes is None else raw_bytes
    return st.one_of(
        st.tuples(st.just("fuzz"), st.just(rpc), messages, st.just(False)),
        st.tuples(st.just("fuzz"), st.just(rpc), as_bytes, st.just(True)),
    )


def programs(
    *fuzz: st.SearchStrategy[tuple[Any, ...]], max_size: int = 24
) -> st.SearchStrategy[list[tuple[Any, ...]]]:
    """Valid traffic (so that there is state to damage) mixed with fuzzed requests."""
    return st.lists(st.one_of(valid_steps, *fuzz, *fuzz), min_size=1, max_size=max_size)

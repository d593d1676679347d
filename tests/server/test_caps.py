"""Caps on what clients can create, through gRPC: each cap answers its error (naming
the field and the cap), changes nothing, admits nothing, and is counted; a webhook
event beyond a cap is left out with its reason."""

from __future__ import annotations

import json

import grpc
import pytest
from server_harness import (
    OTHER_SENDER,
    SENDER,
    T0,
    make_config,
    run_async,
    sender,
    serving,
    template_request,
)

from tiergate import config as cfg
from tiergate.server.app import StartupError
from tiergate.v1 import admission_pb2 as pb


def _sender_update(sender_id: str, **fields: object) -> pb.RecordFeedbackRequest:
    return pb.RecordFeedbackRequest(
        sender_update=pb.SenderUpdate(sender_id=sender_id, **fields)  # type: ignore[arg-type]
    )


def _template_update(template_id: str, name: str = "", waba: str = "") -> pb.RecordFeedbackRequest:
    return pb.RecordFeedbackRequest(
        template_update=pb.TemplateUpdate(
            template_id=template_id,
            template_name=name,
            status=pb.TEMPLATE_STATUS_APPROVED,
            waba_id=waba,
        )
    )


async def _refused(call: object, code: grpc.StatusCode, *words: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call  # type: ignore[misc]
    assert err.value.code() == code, err.value.details()
    for word in words:
        assert word in (err.value.details() or ""), err.value.details()


@run_async
async def test_sender_cap_refuses_a_new_sender_and_keeps_the_known_ones() -> None:
    async with serving(max_senders=2) as h:  # SENDER is seeded from the config
        ok = await h.stub.RecordFeedback(_sender_update(OTHER_SENDER, portfolio_id="p"))
        assert ok.applied
        await _refused(
            h.stub.RecordFeedback(_sender_update("100000000000003")),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "sender_id",
            "max_senders",
            "at most 2",
        )
        assert h.sidecar.service is not None
        assert h.sidecar.service.senders() == [SENDER, OTHER_SENDER]
        await _refused(
            h.stub.GetSenderState(pb.GetSenderStateRequest(sender_id="100000000000003")),
            grpc.StatusCode.NOT_FOUND,
        )
        # a known sender still takes updates at the cap
        again = await h.stub.RecordFeedback(_sender_update(OTHER_SENDER, tier="TIER_2K"))
        assert again.applied
        assert h.sidecar.service.state.capped["max_senders"] == 1
        text = h.sidecar.metrics.render()
        assert "tiergate_capped_max_senders_total 1.0\n" in text
        assert "tiergate_senders 2.0\n" in text


@run_async
async def test_over_long_ids_of_a_sender_update_are_invalid_and_change_nothing() -> None:
    async with serving(max_id_length=20) as h:
        await _refused(
            h.stub.RecordFeedback(_sender_update("1" * 21)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "sender_id",
            "longer than 20",
            "max_id_length",
        )
        for field in ("portfolio_id", "waba_id", "display_phone_number"):
            await _refused(
                h.stub.RecordFeedback(_sender_update(OTHER_SENDER, **{field: "9" * 21})),
                grpc.StatusCode.INVALID_ARGUMENT,
                field,
                "longer than 20",
            )
        assert h.sidecar.service is not None
        assert h.sidecar.service.senders() == [SENDER]
        assert h.sidecar.service.state.capped["max_id_length"] == 4


@run_async
async def test_template_cap_and_template_id_length() -> None:
    async with serving(max_templates=1, max_template_id_length=8) as h:
        assert (await h.stub.RecordFeedback(_template_update("t1", "promo"))).applied
        await _refused(
            h.stub.RecordFeedback(_template_update("t2")),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "template_id",
            "max_templates",
        )
        # the known template, by id or name, is still updated at the cap
        assert (await h.stub.RecordFeedback(_template_update("promo"))).applied
        await _refused(
            h.stub.RecordFeedback(_template_update("t" * 9)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "template_id",
            "longer than 8",
        )
        await _refused(
            h.stub.RecordFeedback(_template_update("t1", "n" * 9)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "template_name",
        )
        assert h.sidecar.service is not None
        assert list(h.sidecar.service.state.templates) == ["t1"]


@run_async
async def test_templates_per_waba_cap_keeps_room_for_the_other_wabas() -> None:
    async with serving(max_templates=10, max_templates_per_waba=2) as h:
        for tid in ("a1", "a2"):
            assert (await h.stub.RecordFeedback(_template_update(tid, waba="wa"))).applied
        await _refused(
            h.stub.RecordFeedback(_template_update("a3", waba="wa")),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "template_id",
            "max_templates_per_waba",
            "at most 2",
            "'wa'",
        )
        # the other WABAs still have their room; a known template still updates
        assert (await h.stub.RecordFeedback(_template_update("b1", waba="wb"))).applied
        assert (await h.stub.RecordFeedback(_template_update("a1", name="n", waba="wa"))).applied
        # moving b1 into the full WABA names the field that moves it
        await _refused(
            h.stub.RecordFeedback(_template_update("b1", waba="wa")),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "waba_id",
            "max_templates_per_waba",
        )
        assert h.sidecar.service is not None
        assert sorted(h.sidecar.service.state.templates) == ["a1", "a2", "b1"]
        assert h.sidecar.service.state.templates["b1"].waba_id == "wb"
        text = h.sidecar.metrics.render()
        assert "tiergate_capped_max_templates_per_waba_total 2.0\n" in text
        assert "tiergate_capped_max_templates_total 0.0\n" in text


@run_async
async def test_webhook_templates_beyond_their_waba_cap_are_left_out_with_the_reason() -> None:
    async with serving(max_templates_per_waba=2) as h:
        out = await h.stub.IngestWebhook(
            pb.IngestWebhookRequest(body=_template_webhook("a", "b", "c"), at_unix_ms=T0)
        )
        assert (out.applied, out.ignored) == (2, 1)
        (left_out,) = out.ignored_events
        assert left_out.field == "message_template_status_update"
        assert "max_templates_per_waba" in left_out.reason
        assert "at most 2" in left_out.reason
        # another WABA's templates still apply
        other = await h.stub.IngestWebhook(
            pb.IngestWebhookRequest(
                body=_template_webhook("d", waba="w2", first_id=2000), at_unix_ms=T0
            )
        )
        assert (other.applied, other.ignored) == (1, 0)
        assert h.sidecar.service is not None
        assert dict(h.sidecar.service.state.waba_templates) == {"w1": 2, "w2": 1}
        assert h.sidecar.service.state.capped["max_templates_per_waba"] == 1


def _used(state: pb.SenderState) -> int:
    return state.used_24h


@run_async
async def test_idempotency_key_cap_admits_nothing_beyond_it_and_repeats_still_answer() -> None:
    async with serving(max_idempotency_keys=2) as h:
        first = await h.stub.Admit(template_request("4915112345601", key="k1"))
        assert first.decision == pb.DECISION_ADMIT
        assert (await h.stub.Admit(template_request("4915112345602", key="k2"))).decision == (
            pb.DECISION_ADMIT
        )
        before = await h.stub.GetSenderState(pb.GetSenderStateRequest(sender_id=SENDER))
        await _refused(
            h.stub.Admit(template_request("4915112345603", key="k3")),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "idempotency_key",
            "max_idempotency_keys",
            "at most 2",
        )
        batch = pb.AdmitBatchRequest(
            requests=[
                template_request("4915112345604", key="k4"),
                template_request("4915112345605", key="k5"),
            ]
        )
        await _refused(h.stub.AdmitBatch(batch), grpc.StatusCode.RESOURCE_EXHAUSTED, "at most 2")
        after = await h.stub.GetSenderState(pb.GetSenderStateRequest(sender_id=SENDER))
        assert _used(after) == _used(before) == 2  # nothing admitted, nothing counted
        repeat = await h.stub.Admit(template_request("4915112345601", key="k1"))
        assert repeat.ticket == first.ticket  # a known key still answers at the cap
        # without a key, a send is decided as ever
        assert (await h.stub.Admit(template_request("4915112345606"))).decision == pb.DECISION_ADMIT
        assert h.sidecar.service is not None
        assert h.sidecar.service.state.capped["max_idempotency_keys"] == 2


@run_async
async def test_over_long_idempotency_keys_are_invalid_on_every_admit_path() -> None:
    async with serving(max_idempotency_key_length=10) as h:
        await _refused(
            h.stub.Admit(template_request("4915112345601", key="k" * 11)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "idempotency_key",
            "longer than 10",
            "max_idempotency_key_length",
        )
        batch = pb.AdmitBatchRequest(
            requests=[
                template_request("4915112345601", key="ok"),
                template_request("4915112345602", key="k" * 11),
            ]
        )
        await _refused(
            h.stub.AdmitBatch(batch),
            grpc.StatusCode.INVALID_ARGUMENT,
            "requests[1].idempotency_key",
            "longer than 10",
        )
        columns = pb.AdmitColumnsRequest(
            senders=[SENDER],
            sender_index=[0, 0],
            recipients=["4915112345601", "4915112345602"],
            kinds=bytes([pb.TEMPLATE, pb.TEMPLATE]),
            categories=bytes([pb.UTILITY, pb.UTILITY]),
            templates=["t1"],
            template_index=[1, 1],
            idempotency_keys=["ok", "k" * 11],
            at_unix_ms=[T0, T0],
        )
        await _refused(
            h.stub.AdmitColumns(columns),
            grpc.StatusCode.INVALID_ARGUMENT,
            "idempotency_keys[1]",
        )
        state = await h.stub.GetSenderState(pb.GetSenderStateRequest(sender_id=SENDER))
        assert state.used_24h == 0
        assert h.sidecar.service is not None
        assert h.sidecar.service.state.capped["max_idempotency_key_length"] == 3


def _template_webhook(*names: str, waba: str = "w1", first_id: int = 1000) -> bytes:
    changes = [
        {
            "field": "message_template_status_update",
            "value": {
                "event": "APPROVED",
                "message_template_id": first_id + i,
                "message_template_name": name,
                "message_template_language": "en_US",
                "reason": "NONE",
            },
        }
        for i, name in enumerate(names)
    ]
    body = {"object": "whatsapp_business_account", "entry": [{"id": waba, "changes": changes}]}
    return json.dumps(body).encode()


@run_async
async def test_webhook_events_beyond_a_cap_are_left_out_with_the_reason() -> None:
    async with serving(max_templates=2) as h:
        out = await h.stub.IngestWebhook(
            pb.IngestWebhookRequest(body=_template_webhook("a", "b", "c"), at_unix_ms=T0)
        )
        assert out.applied == 2
        assert out.ignored == 1
        (left_out,) = out.ignored_events
        assert left_out.field == "message_template_status_update"
        assert "max_templates" in left_out.reason and "at most 2" in left_out.reason
        assert h.sidecar.service is not None
        assert len(h.sidecar.service.state.templates) == 2
        assert h.sidecar.service.state.capped["max_templates"] == 1


def test_config_senders_beyond_the_cap_refuse_to_start() -> None:
    config = make_config(
        max_senders=1, senders=(sender(), sender(OTHER_SENDER, display_phone_number="+1555"))
    )

    @run_async
    async def start() -> None:
        async with serving(config):
            pass

    with pytest.raises(StartupError, match=r"senders\[1\].*max_senders"):
        start()


def test_caps_are_settings_with_flags_env_and_toml(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "t.toml"
    path.write_text("max_senders = 50\nmax_idempotency_key_length = 64\n", encoding="utf-8")
    config = cfg.load(
        {"config": str(path), "max_templates": "7"},
        env={"TIERGATE_MAX_IDEMPOTENCY_KEYS": "1000", "TIERGATE_MAX_TEMPLATES_PER_WABA": "3"},
    )
    caps = cfg.caps(config)
    assert (caps.senders, caps.templates, caps.idempotency_keys, caps.key_length) == (
        50,
        7,
        1000,
        64,
    )
    assert caps.templates_per_waba == 3
    assert config.origins["max_senders"] == "file"
    path.write_text("max_templates_per_waba = 4\n", encoding="utf-8")
    from_file = cfg.load({"config": str(path)}, env={})
    assert cfg.caps(from_file).templates_per_waba == 4
    flag = cfg.load({"config": str(path), "max_templates_per_waba": "5"}, env={})
    assert cfg.caps(flag).templates_per_waba == 5
    with pytest.raises(cfg.ConfigError, match="max_templates_per_waba"):
        cfg.load({"max_templates_per_waba": "0"}, env={})
    with pytest.raises(cfg.ConfigError, match="max_id_length"):
        cfg.load({"max_id_length": "129"}, env={})
    with pytest.raises(cfg.ConfigError, match="max_senders"):
        cfg.load({"max_senders": "0"}, env={})

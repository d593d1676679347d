"""The data directory's ticket key: made once (private, atomically), then only read."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import pytest

from tiergate.config import Endpoint, ServeConfig
from tiergate.server import Sidecar, StartupError
from tiergate.store import StoreError
from tiergate.store.ticket_key import TICKET_KEY_FILE, load_or_create


def test_made_once_private_then_read(tmp_path: Path) -> None:
    key = load_or_create(tmp_path)
    path = tmp_path / TICKET_KEY_FILE
    assert len(key) == 16
    assert path.read_text() == key.hex() + "\n"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_or_create(tmp_path) == key
    assert sorted(p.name for p in tmp_path.iterdir()) == [TICKET_KEY_FILE]  # no temporary left


def test_a_left_over_temporary_file_is_replaced(tmp_path: Path) -> None:
    (tmp_path / (TICKET_KEY_FILE + ".tmp")).write_text("half a key")
    key = load_or_create(tmp_path)
    assert (tmp_path / TICKET_KEY_FILE).read_text().strip() == key.hex()
    assert not (tmp_path / (TICKET_KEY_FILE + ".tmp")).exists()


@pytest.mark.parametrize("text", ["", "abc\n", "zz" * 16, "00" * 17, b"\xff\xfe"])
def test_a_damaged_key_file_is_an_error(tmp_path: Path, text: str | bytes) -> None:
    path = tmp_path / TICKET_KEY_FILE
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    with pytest.raises(StoreError, match="ticket"):
        load_or_create(tmp_path)


def test_the_server_refuses_to_start_with_a_damaged_key(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / TICKET_KEY_FILE).write_text("not a key\n")
    config = ServeConfig(listen=Endpoint("127.0.0.1", 0), data_dir=data)

    async def start() -> None:
        sidecar = Sidecar(config)
        try:
            await sidecar.start()
        finally:
            if sidecar.store is not None:
                sidecar.store.close()

    with pytest.raises(StartupError, match=r"data_dir: .*ticket\.key: a ticket key is 32 hex"):
        asyncio.run(start())

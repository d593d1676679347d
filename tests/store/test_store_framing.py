"""Journal and snapshot framing: round trips, checksums, versions."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tiergate.store import FormatVersionError
from tiergate.store import journal as j
from tiergate.store import snapshot as s

PATH = Path("journal-00000000000000000001.tgj")


def segment(records: list[bytes], first_seq: int = 1) -> bytes:
    return j.encode_segment_header(first_seq) + j.encode_frames(records, first_seq)


def read_all(data: bytes, first_seq: int = 1) -> tuple[list[tuple[int, bytes]], j.SegmentScan]:
    scan = j.SegmentScan(path=PATH, size=len(data))
    out = [(seq, data[a:b]) for seq, a, b in j.iter_frames(data, PATH, first_seq, scan)]
    return out, scan


@settings(max_examples=60, deadline=None)
@given(
    records=st.lists(st.binary(max_size=300), max_size=40),
    first_seq=st.integers(min_value=1, max_value=1 << 60),
)
def test_frames_round_trip(records: list[bytes], first_seq: int) -> None:
    data = segment(records, first_seq)
    assert j.decode_segment_header(data, PATH) == first_seq
    out, scan = read_all(data, first_seq)
    assert out == [(first_seq + i, r) for i, r in enumerate(records)]
    assert scan.bad_offset is None
    assert scan.end_offset == len(data)
    assert scan.last_seq == first_seq + len(records) - 1
    assert len(data) == j.SEGMENT_HEADER_SIZE + sum(j.FRAME_OVERHEAD + len(r) for r in records)


@settings(max_examples=60, deadline=None)
@given(
    records=st.lists(st.binary(min_size=1, max_size=50), min_size=1, max_size=20),
    cut=st.integers(min_value=1, max_value=60),
)
def test_any_truncation_is_a_clean_tail(records: list[bytes], cut: int) -> None:
    data = segment(records)
    cut = min(cut, len(data) - j.SEGMENT_HEADER_SIZE)
    torn = data[: len(data) - cut]
    out, scan = read_all(torn)
    # every frame wholly before the cut survives, the torn one is reported, nothing follows
    assert [r for _, r in out] == records[: len(out)]
    if scan.end_offset < len(torn):
        if scan.zero_tail is not None:
            # What is left of the torn frame is all zeros, as a preallocated
            # segment's unused room is: read as the journal's clean end.
            assert scan.zero_tail == scan.end_offset and not any(torn[scan.end_offset :])
        else:
            assert scan.bad_offset == scan.end_offset
            assert scan.valid_after is None
    assert len(out) < len(records)


def test_flipped_byte_is_caught_and_valid_records_after_it_are_found() -> None:
    records = [f"record-{i}".encode() * 3 for i in range(10)]
    data = bytearray(segment(records))
    third = j.SEGMENT_HEADER_SIZE + 2 * (j.FRAME_OVERHEAD + len(records[0]))
    data[third + j.FRAME_OVERHEAD + 5] ^= 0x01
    out, scan = read_all(bytes(data))
    assert [r for _, r in out] == records[:2]
    assert scan.bad_offset == third
    assert scan.bad_reason == "checksum mismatch"
    assert scan.valid_after == third + j.FRAME_OVERHEAD + len(records[2])


def test_corrupt_length_field_still_finds_later_records() -> None:
    records = [b"x" * 40 for _ in range(6)]
    data = bytearray(segment(records))
    second = j.SEGMENT_HEADER_SIZE + j.FRAME_OVERHEAD + 40
    struct.pack_into("<I", data, second + 4, 0xFFFFFF)  # absurd length
    out, scan = read_all(bytes(data))
    assert len(out) == 1
    assert scan.bad_offset == second
    assert scan.valid_after == second + j.FRAME_OVERHEAD + 40


def test_wrong_sequence_number_is_corruption() -> None:
    data = segment([b"a"], 1) + j.encode_frames([b"b"], 5)
    out, scan = read_all(data)
    assert out == [(1, b"a")]
    assert scan.bad_reason == "sequence number 5, expected 2"


def test_zero_filled_tail_is_the_segments_clean_end() -> None:
    # The writer preallocates segments: after a crash the rest is zeros.
    data = segment([b"abc", b"def"]) + bytes(4096)
    out, scan = read_all(data)
    assert [r for _, r in out] == [b"abc", b"def"]
    assert scan.bad_offset is None
    assert scan.zero_tail == scan.end_offset == len(data) - 4096
    # A few zeros, shorter than a frame header, end it as well.
    out, scan = read_all(segment([b"abc"]) + bytes(5))
    assert scan.bad_offset is None and scan.zero_tail is not None


def test_torn_record_before_a_zero_filled_tail_is_a_tail() -> None:
    # Killed in the middle of copying a frame into the mapped segment.
    whole = segment([b"abc", b"def"])
    data = whole[:-2] + bytes(1 << 20)
    out, scan = read_all(data)
    assert [r for _, r in out] == [b"abc"]
    assert scan.bad_offset is not None and scan.valid_after is None
    assert scan.zero_tail is None


def test_a_zero_frame_header_with_data_after_it_is_damage() -> None:
    data = segment([b"abc"]) + bytes(16) + j.encode_frames([b"def"], 2)
    out, scan = read_all(data)
    assert [r for _, r in out] == [b"abc"]
    assert scan.bad_offset is not None and scan.valid_after == len(data) - 19


def test_segment_header_versions_and_damage() -> None:
    good = j.encode_segment_header(7)
    assert j.decode_segment_header(good, PATH) == 7
    newer = struct.pack("<8sIIQ", j.JOURNAL_MAGIC, j.JOURNAL_VERSION + 1, 0, 7)
    newer += struct.pack("<I", zlib.crc32(newer))
    with pytest.raises(FormatVersionError, match=r"format version 2 is newer"):
        j.decode_segment_header(newer, PATH)
    with pytest.raises(j.BadSegmentHeader, match="bad magic"):
        j.decode_segment_header(b"X" + good[1:], PATH)
    with pytest.raises(j.BadSegmentHeader, match="checksum"):
        j.decode_segment_header(good[:-1] + bytes([good[-1] ^ 1]), PATH)
    with pytest.raises(j.BadSegmentHeader, match="header is 5 bytes"):
        j.decode_segment_header(good[:5], PATH)


def test_oversized_record_is_refused() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        j.encode_frames([bytes(j.MAX_RECORD_BYTES + 1)], 1)


def test_segment_names_sort_by_sequence() -> None:
    names = [j.segment_name(n) for n in (1, 10, 2, 1 << 40)]
    assert [j.parse_segment_name(n) for n in sorted(names)] == [1, 2, 10, 1 << 40]
    assert j.parse_segment_name("journal-1.tgj") is None
    assert j.parse_segment_name(j.segment_name(3) + ".corrupt") is None


def test_snapshot_round_trip_and_damage(tmp_path: Path) -> None:
    payload = bytes(range(256)) * 100
    path = s.write_snapshot(tmp_path, 42, payload)
    assert path.name == s.snapshot_name(42)
    assert s.read_snapshot(path) == (42, payload)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left

    data = path.read_bytes()
    path.write_bytes(data[:-10])
    with pytest.raises(s.BadSnapshot, match="truncated or padded"):
        s.read_snapshot(path)
    path.write_bytes(data[:20])
    with pytest.raises(s.BadSnapshot, match="truncated header"):
        s.read_snapshot(path)
    flipped = bytearray(data)
    flipped[-1] ^= 0x80
    path.write_bytes(bytes(flipped))
    with pytest.raises(s.BadSnapshot, match="payload checksum"):
        s.read_snapshot(path)


def test_newer_snapshot_version_refuses(tmp_path: Path) -> None:
    payload = b"state"
    head = struct.pack(
        "<8sIIQQI",
        s.SNAPSHOT_MAGIC,
        s.SNAPSHOT_VERSION + 1,
        0,
        3,
        len(payload),
        zlib.crc32(payload),
    )
    path = tmp_path / s.snapshot_name(3)
    path.write_bytes(head + struct.pack("<I", zlib.crc32(head)) + payload)
    with pytest.raises(FormatVersionError, match="snapshot format version 2 is newer"):
        s.read_snapshot(path)

"""Recovery at start-up: the state a data directory holds, back into the service.

In order: interrupted snapshot writes are removed; every segment header is
checked (a torn last one is dropped); the newest usable snapshot is restored,
falling back past damaged ones (renamed ``*.corrupt``) as long as the journal
covers the older one; the journal after it is replayed. A torn or corrupt
record at the very end of the journal (what a crash mid-write leaves) is cut
off and reported. A bad record with valid ones after it refuses the start
(``CorruptJournalError``) unless ``recover_truncate`` is set, which cuts the
journal there and keeps the cut-off bytes in ``*.corrupt`` files.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from .base import (
    CorruptJournalError,
    CorruptSnapshotError,
    Recoverable,
    RecoveryReport,
    StoreError,
)
from .journal import (
    MIN_SEGMENT_BYTES,
    SEGMENT_HEADER_SIZE,
    BadSegmentHeader,
    JournalWriter,
    SegmentScan,
    decode_segment_header,
    iter_frames,
    list_segments,
    no_space,
    read_segment,
)
from .snapshot import TMP_SUFFIX, BadSnapshot, list_snapshots, read_snapshot

CORRUPT_SUFFIX = ".corrupt"


def recover_data_dir(
    data_dir: Path, service: Recoverable, *, recover_truncate: bool
) -> RecoveryReport:
    """Restore ``data_dir``'s newest usable snapshot into ``service`` and replay the
    journal after it. The report names the snapshot's seq (0: none) and the last
    seq replayed; ``service`` queues no journal records for what it restored or
    replayed."""
    return _Recovery(data_dir, recover_truncate).run(service)


def open_journal(data_dir: Path, last_seq: int, segment_bytes: int) -> JournalWriter:
    """The journal writer that appends after ``last_seq`` (what recovery replayed)."""
    remaining = list_segments(data_dir)
    if remaining and remaining[-1][0] == last_seq + 1:
        # a header-only segment from an earlier start; the new one takes its name
        path = remaining[-1][1]
        if path.stat().st_size <= SEGMENT_HEADER_SIZE:
            path.unlink()
    older = sum(p.stat().st_size for _, p in list_segments(data_dir))
    try:
        writer = JournalWriter(data_dir, last_seq + 1, segment_bytes)
    except OSError as exc:
        if not no_space(exc):
            raise
        least = min(segment_bytes, MIN_SEGMENT_BYTES)
        raise StoreError(
            f"data dir {data_dir}: no space left on device for the journal (its "
            f"first segment needs {least} bytes free); free some space and start again"
        ) from exc
    writer.older_bytes = older
    return writer


class _Recovery:
    """One recovery of ``data_dir``; ``recover_truncate`` cuts corruption away."""

    def __init__(self, data_dir: Path, recover_truncate: bool) -> None:
        self.data_dir = data_dir
        self.recover_truncate = recover_truncate

    def run(self, service: Recoverable) -> RecoveryReport:
        report = RecoveryReport(data_dir=str(self.data_dir))
        for entry in os.scandir(self.data_dir):
            if entry.name.endswith(TMP_SUFFIX):  # an interrupted snapshot write
                os.unlink(entry.path)

        segments = self._check_segment_headers(report)
        damaged: list[Path] = []
        base_seq, need_until = self._restore_snapshot(service, segments, report, damaged)
        replay_started = time.perf_counter()
        last_seq = self._replay(service, segments, base_seq, report)
        report.replay_seconds = time.perf_counter() - replay_started
        if last_seq < need_until:
            raise CorruptSnapshotError(
                f"{self.data_dir}: the newest snapshot (seq {need_until}) is damaged and the "
                f"journal ends at seq {last_seq}; the state it held cannot be rebuilt. "
                "Restore the data dir from a backup."
            )
        # Records that replay or restore queued describe state already on disk.
        service.drain_journal()
        for path in damaged:
            # Kept for inspection, but no longer a snapshot: pruning counts the
            # snapshots recovery can fall back on, and this one it cannot.
            kept = path.with_name(path.name + CORRUPT_SUFFIX)
            path.rename(kept)
            report.warnings.append(f"{path}: damaged snapshot kept as {kept.name}")
        report.last_seq = last_seq
        return report

    def _check_segment_headers(self, report: RecoveryReport) -> list[tuple[int, Path]]:
        """Validate every segment header; drop a torn last one, refuse (or cut) others."""
        segments = list_segments(self.data_dir)
        good: list[tuple[int, Path]] = []
        for i, (name_seq, path) in enumerate(segments):
            with open(path, "rb") as f:
                head = f.read(SEGMENT_HEADER_SIZE)
            try:
                first = decode_segment_header(head, path)
                if first != name_seq:
                    raise BadSegmentHeader(f"header says first seq {first}, name says {name_seq}")
            except BadSegmentHeader as exc:
                size = path.stat().st_size
                if i == len(segments) - 1 and size <= SEGMENT_HEADER_SIZE:
                    report.warnings.append(
                        f"{path}: torn segment header ({exc}); removed the empty segment"
                    )
                    report.truncated_bytes += size
                    path.unlink()
                    continue
                self._corruption(
                    report, path, 0, f"bad segment header ({exc})", segments[i:], valid_after=None
                )
                break
            good.append((first, path))
        return good

    def _restore_snapshot(
        self,
        service: Recoverable,
        segments: list[tuple[int, Path]],
        report: RecoveryReport,
        damaged_paths: list[Path],
    ) -> tuple[int, int]:
        """Restore the newest usable snapshot; return (its seq, seq the journal must reach).
        Damaged snapshots passed over are added to ``damaged_paths``."""
        first_journal_seq = segments[0][0] if segments else None
        need_until = 0
        damaged: list[str] = []
        for seq, path in reversed(list_snapshots(self.data_dir)):
            started = time.perf_counter()
            try:
                got_seq, payload = read_snapshot(path)
                if got_seq != seq:
                    raise BadSnapshot(f"header says seq {got_seq}, name says {seq}")
            except BadSnapshot as exc:
                damaged.append(f"{path.name} ({exc})")
                damaged_paths.append(path)
                report.warnings.append(f"{path}: damaged snapshot ({exc}); trying an older one")
                need_until = max(need_until, seq)
                continue
            covered = first_journal_seq is None or first_journal_seq <= seq + 1
            if need_until > seq and (first_journal_seq is None or first_journal_seq > seq + 1):
                covered = False
            if not covered:
                if need_until > seq:
                    raise CorruptSnapshotError(
                        f"{self.data_dir}: snapshot(s) {', '.join(damaged)} damaged, and the "
                        f"journal (from seq {first_journal_seq}) no longer covers the older "
                        f"snapshot {path.name}; refusing to start. Restore the data dir from "
                        "a backup."
                    )
                raise CorruptSnapshotError(
                    f"{path}: the journal starts at seq {first_journal_seq}, after this "
                    f"snapshot's seq {seq} + 1: journal segments are missing; refusing to start"
                )
            report.snapshot_read_seconds += time.perf_counter() - started
            started = time.perf_counter()
            try:
                service.restore(payload)
            except Exception as exc:
                raise StoreError(f"{path}: the policy layer could not restore it: {exc}") from exc
            report.restore_seconds = time.perf_counter() - started
            report.snapshot_path = str(path)
            report.snapshot_seq = seq
            report.snapshot_bytes = len(payload)
            return seq, need_until
        if damaged and first_journal_seq not in (None, 1):
            raise CorruptSnapshotError(
                f"{self.data_dir}: snapshot(s) {', '.join(damaged)} damaged and the journal "
                f"starts at seq {first_journal_seq}, not 1; refusing to start. Restore the data "
                "dir from a backup."
            )
        if first_journal_seq not in (None, 1):
            raise CorruptSnapshotError(
                f"{self.data_dir}: no snapshot and the journal starts at seq "
                f"{first_journal_seq}, not 1: files are missing; refusing to start"
            )
        return 0, need_until

    def _replay(
        self,
        service: Recoverable,
        segments: list[tuple[int, Path]],
        base_seq: int,
        report: RecoveryReport,
    ) -> int:
        last_seq = base_seq
        expected = base_seq + 1  # next record to replay
        for i, (first, path) in enumerate(segments):
            if i + 1 < len(segments) and segments[i + 1][0] <= expected:
                continue  # wholly covered by the snapshot
            if first > expected:
                self._corruption(
                    report,
                    path,
                    0,
                    f"journal gap: records {expected}..{first - 1} are missing",
                    segments[i:],
                    valid_after=SEGMENT_HEADER_SIZE,
                )
                break
            data = read_segment(path)
            report.segments_read += 1
            scan = SegmentScan(path=path, size=len(data))
            for seq, start, stop in iter_frames(data, path, first, scan):
                if seq < expected:
                    continue
                try:
                    service.replay(data[start:stop])
                except Exception as exc:
                    raise StoreError(
                        f"{path}: the policy layer could not replay record seq {seq} at offset "
                        f"{start - 16}: {exc}"
                    ) from exc
                report.records_replayed += 1
                report.replayed_bytes += stop - start
                expected = seq + 1
                last_seq = seq
            if scan.zero_tail is not None:
                # The writer's preallocated room, unused when the process ended
                # without closing the segment (the current one, or one rotated
                # out whose cut was still queued): not damage, nothing to report.
                self._truncate(path, scan.zero_tail)
            if scan.bad_offset is not None:
                is_tail = scan.valid_after is None and i == len(segments) - 1
                if is_tail:
                    cut = len(data) - scan.bad_offset
                    report.warnings.append(
                        f"{path}: torn or corrupt record at the journal tail, offset "
                        f"{scan.bad_offset} ({scan.bad_reason}); truncated {cut} bytes"
                    )
                    report.truncated_bytes += cut
                    self._truncate(path, scan.bad_offset)
                else:
                    self._corruption(
                        report,
                        path,
                        scan.bad_offset,
                        f"corrupt record ({scan.bad_reason})",
                        segments[i:],
                        valid_after=scan.valid_after,
                    )
                break
        return last_seq

    def _corruption(
        self,
        report: RecoveryReport,
        path: Path,
        offset: int,
        what: str,
        rest: list[tuple[int, Path]],
        valid_after: int | None,
    ) -> None:
        """Corruption with valid data after it: refuse, or cut and keep the cut-off bytes."""
        later = [p.name for _, p in rest[1:]]
        where = f"{path}: {what} at offset {offset}"
        if valid_after is not None:
            follows = f"valid records follow at offset {valid_after}"
        elif later:
            follows = f"later segments follow ({', '.join(later)})"
        else:
            follows = f"{path.stat().st_size - offset} bytes follow it"
        if not self.recover_truncate:
            raise CorruptJournalError(
                f"{where}; {follows}, so this is not a torn tail. Refusing to start: back up "
                f"{self.data_dir}, then start with --recover-truncate to drop the journal from "
                "this point on (the dropped bytes are kept in *.corrupt files).",
                path,
                offset,
            )
        dropped = 0
        head = path.read_bytes()
        keep_from = offset if offset > 0 else 0
        saved = path.with_name(f"{path.name}.at-{offset}{CORRUPT_SUFFIX}")
        saved.write_bytes(head[keep_from:])
        dropped += len(head) - keep_from
        if offset > 0:
            self._truncate(path, offset)
        else:
            path.unlink()
        for _, other in rest[1:]:
            dropped += other.stat().st_size
            other.rename(other.with_name(other.name + CORRUPT_SUFFIX))
        report.truncated_bytes += dropped
        report.warnings.append(
            f"{where}; {follows}. --recover-truncate: dropped {dropped} bytes of journal "
            f"from there on (kept in *{CORRUPT_SUFFIX} files)"
        )

    @staticmethod
    def _truncate(path: Path, offset: int) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.ftruncate(fd, offset)
            os.fsync(fd)
        finally:
            os.close(fd)

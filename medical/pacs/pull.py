"""Pull series from a PACS to a folder, instance by instance, resumable, checked for completeness.

    pacs = DicomWebPacs(PacsConnection("https://pacs/dicom-web", auth=PacsAuth.from_environment()))
    report = pull(pacs, PacsQuery(patient_id="PID-1", modality="CT"), "site_b/images", deid=DeidOptions(key=key))

For each series none of which is on disk yet (over DICOMweb, more than ``workers`` instances):
the PACS counts it (series-level QIDO, cheap), it comes in one request, part by part, each
instance checked (of this series, whole) and de-identified when asked in memory as it arrives,
then written atomically by ``workers`` threads while the next ones arrive; the PACS counts it again. When the answer
was whole and the count before, the count after and the instances received agree, the UIDs
received are the series: no instance list is asked for (Orthanc answers one by reading every
stored file). Otherwise, and for a series partly on disk (a rerun resumes), the PACS lists the
instances (paged) once; those missing are fetched instance by instance with retries, and the
series is counted again (and listed again when the count moved). An instance added or removed
meanwhile raises :class:`SeriesChangedError`; a series is reported complete only when every
instance known is on disk and agrees with the count the PACS gave for the series.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from scalpel.medical.dicom.deid import DeidOptions
from scalpel.medical.pacs.errors import IncompleteSeriesError, PacsError, PacsNotFoundError, SeriesChangedError
from scalpel.medical.pacs.query import PacsQuery, SeriesRef
from scalpel.medical.pacs.sink import InstanceSink

log = logging.getLogger("scalpel.medical.pacs")


class Pacs(Protocol):
    """What a pull needs from a PACS; DICOMweb and DIMSE both provide it."""

    warnings: list[str]

    def search_series(self, query: PacsQuery, max_results: int | None = None) -> list[SeriesRef]: ...
    def instance_uids(self, study_uid: str, series_uid: str) -> list[str]: ...
    def fetch_to(self, ref: SeriesRef, sop_uid: str, path: Path) -> int: ...
    # Optional: stream_series(ref, on_part), one request for a whole series, parts in memory (DICOMweb).


@dataclass
class SeriesPull:
    """One series pulled; UIDs as on disk (pseudonyms when de-identified)."""

    study_uid: str
    series_uid: str
    modality: str
    folder: Path
    instances: int  # listed by the PACS
    fetched: int  # written by this run
    resumed: int  # already on disk from an earlier run
    bytes_written: int
    complete: bool

    def to_dict(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in self.__dict__.items()}


@dataclass
class PullReport:
    output: Path
    deidentified: bool
    series: list[SeriesPull] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return bool(self.series) and all(s.complete for s in self.series)

    def to_dict(self) -> dict[str, Any]:
        return {"output": str(self.output), "deidentified": self.deidentified, "complete": self.complete,
                "series": [s.to_dict() for s in self.series], "warnings": self.warnings}


def pull(pacs: Pacs, query: PacsQuery, out: str | Path, *, deid: DeidOptions | None = None, workers: int = 4,
         max_results: int | None = None, on_instance: Callable[[SeriesRef, str], None] | None = None) -> PullReport:
    """Pull every series matching ``query`` into ``out`` (see the module docstring).

    Args:
        deid: de-identify on the fly with these options (a key is required).
        workers: instances fetched at once (each holds one instance in memory).
        on_instance: called after each instance is written, with the series and original SOP UID.

    Raises:
        PacsNotFoundError: nothing matches. SeriesChangedError: a series changed during the pull.
        IncompleteSeriesError: a series could not be pulled whole.
    """
    sink = InstanceSink(out, deid)
    refs = pacs.search_series(query, max_results=max_results)
    if not refs:
        raise PacsNotFoundError(f"no series on the PACS matches {query.filters()}; check the patient/study/series "
                                "identifiers and dates (list what the PACS has with --list)")
    report = PullReport(Path(out), deid is not None)
    for ref in refs:
        report.series.append(pull_series(pacs, ref, sink, workers=workers, on_instance=on_instance))
    report.warnings = list(pacs.warnings)
    return report


def pull_series(pacs: Pacs, ref: SeriesRef, sink: InstanceSink, *, workers: int = 4,
                on_instance: Callable[[SeriesRef, str], None] | None = None) -> SeriesPull:
    """Pull one series into ``sink``; see :func:`pull`."""
    sink.clean_partial(ref)
    stream = getattr(pacs, "stream_series", None)
    count = getattr(pacs, "instance_count", lambda _: None)
    # Listing a series costs Orthanc a read of every stored file; counting it is cheap. A series none
    # of which is on disk is streamed whole without a list, and its UIDs are learnt as they arrive.
    before = count(ref) if stream is not None and not sink.has_any(ref) else None
    unlisted = before is not None and before > max(1, workers)
    listed = [] if unlisted else _listed(pacs, ref)
    todo = [uid for uid in listed if not sink.have(ref, uid)]
    on_disk = len(listed) - len(todo)
    log.info("series %s: %s instance(s), %d on disk already", sink.uid(ref.series_uid), before if unlisted else len(listed), on_disk)
    written = 0
    received: set[str] = set()
    lock = threading.Lock()

    def tally(sop_uid: str, size: int) -> None:
        nonlocal written
        with lock:
            written += size
            received.add(sop_uid)
        if on_instance is not None:
            on_instance(ref, sop_uid)

    def accept(instance: Path, expected: set[str] | None) -> None:
        try:
            tally(*sink.accept(instance, ref, expected))
        finally:
            instance.unlink(missing_ok=True)

    whole = False
    if stream is not None and (unlisted or len(todo) > max(1, workers)):  # one request for the series beats one per instance
        whole = _stream(stream, ref, sink, None if unlisted else set(todo), tally, workers)
    checked = False
    if unlisted:
        after = count(ref)
        if whole and before == after == len(received):
            listed, checked = sorted(received), True
        else:  # cut, or the counts disagree: list the series once, to fetch what is missing or say what changed
            listed = _listed(pacs, ref)
            if after != before:
                _changed(sink, ref, max((after or 0) - before, 0), max(before - (after or 0), 0))
            gone = received - set(listed)
            if gone:
                _changed(sink, ref, len(gone), len(gone))
    todo = [uid for uid in listed if uid not in received and not sink.have(ref, uid)]

    def fetch(sop_uid: str) -> None:
        path = sink.temporary(ref, sop_uid)
        try:
            pacs.fetch_to(ref, sop_uid, path)
        except PacsNotFoundError as err:
            path.unlink(missing_ok=True)
            raise SeriesChangedError(f"instance {sink.uid(sop_uid)} of series {sink.uid(ref.series_uid)} was listed by the "
                                     "PACS and is gone now: the series changed during the pull; run it again once the "
                                     "series is stable (what is on disk is kept)") from err
        accept(path, {sop_uid})

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        list(pool.map(fetch, todo))
    if not checked:  # list again only when the count moved (or the PACS cannot count), to say what changed
        counted = count(ref)
        now = set(listed) if counted == len(listed) else set(pacs.instance_uids(ref.study_uid, ref.series_uid))
        if now != set(listed) or (counted is not None and counted != len(now)):
            _changed(sink, ref, len(now - set(listed)), len(set(listed) - now))
    sink.finish_series(ref, listed)
    missing = [uid for uid in listed if not sink.have(ref, uid)]
    count_agrees = ref.instances is None or ref.instances == len(listed)
    if not count_agrees:
        log.warning("series %s: the PACS counts %d instances but lists %d", sink.uid(ref.series_uid), ref.instances, len(listed))
    pulled = SeriesPull(sink.uid(ref.study_uid), sink.uid(ref.series_uid), ref.modality, sink.folder(ref), len(listed),
                        len(received), on_disk, written, complete=not missing and count_agrees)
    if not pulled.complete:
        raise IncompleteSeriesError(f"series {pulled.series_uid} is partial: {len(missing)} of {len(listed)} instance(s) "
                                    f"missing on disk{'' if count_agrees else f', and the PACS counts {ref.instances}'}; "
                                    "run the pull again")
    return pulled


def _listed(pacs: Pacs, ref: SeriesRef) -> list[str]:
    """The SOP UIDs the PACS lists for the series, checked: not empty, none twice."""
    listed = pacs.instance_uids(ref.study_uid, ref.series_uid)
    if not listed:
        raise PacsNotFoundError(f"series {ref.series_uid} of study {ref.study_uid} has no instances on the PACS; check the UIDs")
    if len(set(listed)) != len(listed):
        raise IncompleteSeriesError(f"the PACS lists some instances of series {ref.series_uid} twice; its paging is "
                                    "inconsistent (the series may be changing): run the pull again")
    return listed


def _changed(sink: InstanceSink, ref: SeriesRef, added: int, removed: int) -> None:
    raise SeriesChangedError(f"series {sink.uid(ref.series_uid)} changed during the pull ({added} instance(s) added, "
                             f"{removed} removed on the PACS): what is on disk is not the series as it is now; run "
                             "the pull again once the series is stable, it fetches only what is missing")


def _stream(stream, ref: SeriesRef, sink: InstanceSink, expected: set[str] | None,
            tally: Callable[[str, int], None], workers: int) -> bool:
    """Retrieve the series in one request; each instance is checked and de-identified in memory by
    the receiving thread, and written by ``workers`` threads while the next ones arrive (writing waits
    on the file system, receiving on the socket: both let the other threads run). ``expected``: the
    SOP UIDs asked for, None for any of the series. At most ``max(2, workers - 1)`` instances are in
    memory (the one arriving, those waiting to be written), so memory stays within one batch of
    ``workers`` instances, whatever the series' length. Whether the answer came whole (False: it broke off, and
    the caller fetches what is missing)."""
    failures: list[BaseException] = []
    room = threading.BoundedSemaphore(max(1, workers - 2))  # instances handed over and not written yet

    def store(prepared) -> None:
        try:
            tally(*sink.store(ref, prepared))
        except BaseException as err:  # noqa: BLE001 - raised in the receiving thread, below
            failures.append(err)
        finally:
            room.release()

    def hand_over(part: bytearray) -> None:
        prepared = sink.prepare(part, ref, expected)
        room.acquire()  # wait for room before the next instance arrives
        if failures:
            room.release()
            raise failures[0]
        pool.submit(store, prepared)

    whole = True
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        try:
            stream(ref, hand_over)
        except PacsError as err:
            if type(err) is not PacsError or failures:  # refused, not DICOM, changed: no point in going on
                raise failures[0] if failures else err
            log.info("series %s: the series request broke off (%s); fetching the missing instance(s) one by one",
                     sink.uid(ref.series_uid), err)
            whole = False
    if failures:  # every instance handed over has been written (or has failed) by now
        raise failures[0]
    return whole

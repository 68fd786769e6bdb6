"""Pull series from a PACS to a folder, instance by instance, resumable, checked for completeness.

    pacs = DicomWebPacs(PacsConnection("https://pacs/dicom-web", auth=PacsAuth.from_environment()))
    report = pull(pacs, PacsQuery(patient_id="PID-1", modality="CT"), "site_b/images", deid=DeidOptions(key=key))

For each series: the PACS lists its instances (paged); those already on disk are skipped (a
rerun resumes); the rest are fetched by ``workers`` threads, each streaming one instance to a
temporary file at a time, checked (the UID asked for, pixel data whole), de-identified when asked, and written
atomically. A series of more than ``workers`` missing instances is first asked for in one request
(streamed part by part to disk); if that breaks off, the rest comes instance by instance with
retries. Afterwards the PACS counts the series again (and lists it again when the count moved or
it cannot count): an instance added or removed meanwhile raises :class:`SeriesChangedError`, and a
series is reported complete only when every listed instance is on disk and the list agrees with
the count the PACS gave for the series.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
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
    # Optional: stream_series(ref, new_file, on_part), one request for a whole series (DICOMweb).


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
    listed = pacs.instance_uids(ref.study_uid, ref.series_uid)
    if not listed:
        raise PacsNotFoundError(f"series {ref.series_uid} of study {ref.study_uid} has no instances on the PACS; check the UIDs")
    if len(set(listed)) != len(listed):
        raise IncompleteSeriesError(f"the PACS lists some instances of series {ref.series_uid} twice; its paging is "
                                    "inconsistent (the series may be changing): run the pull again")
    sink.clean_partial(ref)
    todo = [uid for uid in listed if not sink.have(ref, uid)]
    log.info("series %s: %d instance(s), %d on disk already", sink.uid(ref.series_uid), len(listed), len(listed) - len(todo))
    written = 0
    pending = set(todo)

    lock = threading.Lock()

    def done(sop_uid: str, size: int) -> None:
        nonlocal written
        with lock:
            written += size
            pending.discard(sop_uid)
        if on_instance is not None:
            on_instance(ref, sop_uid)

    def accept(received: Path, expected: set[str]) -> None:
        try:
            done(*sink.accept(received, ref, expected))
        finally:
            received.unlink(missing_ok=True)

    stream = getattr(pacs, "stream_series", None)
    if stream is not None and len(todo) > max(1, workers):  # one request for the series beats one per instance
        expected = set(todo)
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:  # checks and de-identification overlap the transfer
            checking: list[Future] = []

            def hand_over(received: Path) -> None:
                checking.append(pool.submit(accept, received, expected))
                while len(checking) > workers:  # at most `workers` instances wait on disk to be checked
                    checking.pop(0).result()

            try:
                stream(ref, lambda: sink.temporary(ref), hand_over)
            except PacsError as err:
                if type(err) is not PacsError:  # refused, not DICOM, changed: no point in going on
                    raise
                log.info("series %s: the series request broke off (%s); fetching the missing instance(s) one by one",
                         sink.uid(ref.series_uid), err)
            finally:
                for future in checking:
                    future.result()

    def fetch(sop_uid: str) -> None:
        received = sink.temporary(ref, sop_uid)
        try:
            pacs.fetch_to(ref, sop_uid, received)
        except PacsNotFoundError as err:
            received.unlink(missing_ok=True)
            raise SeriesChangedError(f"instance {sink.uid(sop_uid)} of series {sink.uid(ref.series_uid)} was listed by the "
                                     "PACS and is gone now: the series changed during the pull; run it again once the "
                                     "series is stable (what is on disk is kept)") from err
        accept(received, {sop_uid})

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        list(pool.map(fetch, [uid for uid in todo if uid in pending]))
    # Listing a series costs the PACS a read of every instance; its count is cheap. List again only
    # when the count moved (or the PACS cannot count), to say what changed.
    count = getattr(pacs, "instance_count", lambda _: None)(ref)
    now = set(listed) if count == len(listed) else set(pacs.instance_uids(ref.study_uid, ref.series_uid))
    if now != set(listed) or (count is not None and count != len(now)):
        added, removed = len(now - set(listed)), len(set(listed) - now)
        raise SeriesChangedError(f"series {sink.uid(ref.series_uid)} changed during the pull ({added} instance(s) added, "
                                 f"{removed} removed on the PACS): what is on disk is not the series as it is now; run "
                                 "the pull again once the series is stable, it fetches only what is missing")
    sink.finish_series(ref, listed)
    missing = [uid for uid in listed if not sink.have(ref, uid)]
    count_agrees = ref.instances is None or ref.instances == len(listed)
    if not count_agrees:
        log.warning("series %s: the PACS counts %d instances but lists %d", sink.uid(ref.series_uid), ref.instances, len(listed))
    pulled = SeriesPull(sink.uid(ref.study_uid), sink.uid(ref.series_uid), ref.modality, sink.folder(ref), len(listed),
                        len(todo), len(listed) - len(todo), written, complete=not missing and count_agrees)
    if not pulled.complete:
        raise IncompleteSeriesError(f"series {pulled.series_uid} is partial: {len(missing)} of {len(listed)} instance(s) "
                                    f"missing on disk{'' if count_agrees else f', and the PACS counts {ref.instances}'}; "
                                    "run the pull again")
    return pulled

"""A PACS over DICOMweb (PS3.18): QIDO-RS search with paging, WADO-RS instance by instance, STOW-RS.

Built on ``dicomweb-client``, with what it leaves out: retries on dropped connections (it
retries on status codes only; its own retries are switched off so one policy decides), errors
that say what to fix, a warning when the server truncates a search, and one client per thread
(a ``requests.Session`` is not meant to be shared between threads).

Orthanc facts (1.10 with DICOMweb 1.7): QIDO honours ``limit``/``offset``; WADO-RS answers an
instance as ``multipart/related; type="application/dicom"`` with a Content-Length; asking for
``transfer-syntax=*`` returns the stored file unchanged (otherwise it may transcode); frames are
answered only as ``application/octet-stream``, so this client never asks for frames.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from scalpel.medical.pacs.connection import PacsConnection, RetryPolicy, with_retries
from scalpel.medical.pacs.errors import NotDicomAnswerError, PacsError, PacsNotFoundError
from scalpel.medical.pacs.query import PacsQuery, SeriesRef, json_value

log = logging.getLogger("scalpel.medical.pacs")
SERIES_FIELDS = ("NumberOfSeriesRelatedInstances", "SeriesDescription", "PatientID", "StudyDate", "Modality")
#: The stored transfer syntax: no transcoding on the server.
_ACCEPT_AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'


class DicomWebPacs:
    """Search, retrieve and store on one DICOMweb service.

    Args:
        connection: URL, credentials, TLS and retry policy.
        page_size: results asked per QIDO request (``limit``); later pages use ``offset``.
    """

    def __init__(self, connection: PacsConnection, page_size: int = 100, chunk_bytes: int = 1 << 17):
        if page_size < 1:
            raise PacsError(f"page size must be >= 1, got {page_size}")
        self.connection = connection
        self.page_size = page_size
        self._chunk = chunk_bytes
        self.warnings: list[str] = []
        self._server_warnings: list[str] = []
        self._local = threading.local()
        self._lock = threading.Lock()

    def _client(self):
        client = getattr(self._local, "client", None)
        if client is None:
            from dicomweb_client import DICOMwebClient

            session = self._local.session = self.connection.session(on_response=self._seen)
            client = DICOMwebClient(self.connection.url, session=session, timeout=self.connection.timeout_s)
            client.set_http_retry_params(retry=False)  # with_retries decides, for status codes and dropped connections
            self._local.client = client
        return client

    def _seen(self, response, *args, **kwargs):
        warning = response.headers.get("Warning")
        if warning:
            with self._lock:
                self._server_warnings.append(warning)
        return response

    def _warn(self, message: str) -> None:
        log.warning(message)
        self.warnings.append(message)

    def _call(self, what: str, call: Callable):
        try:
            return with_retries(call, what, self.connection.retry)
        except (ValueError, InvalidDicomError, KeyError) as err:  # a body that is not DICOM JSON or multipart DICOM
            raise NotDicomAnswerError(f"{what}: the server did not answer DICOM ({type(err).__name__}: {str(err)[:120]}); "
                                      f"check that {self.connection.url} is the DICOMweb root (Orthanc: http://host:8042/dicom-web) "
                                      "and that no proxy or login page answers in its place") from err

    def _search(self, what: str, search: Callable[[int, int], list], max_results: int | None = None,
                keep: Callable[[dict], object] = lambda item: item) -> list:
        """``keep(result)`` for every result of a paged QIDO search (``search(limit, offset)``), or the
        first ``max_results``; only one page of full results is held at a time."""
        results: list = []
        previous: list | None = None
        while max_results is None or len(results) < max_results:
            with self._lock:
                self._server_warnings.clear()
            limit = self.page_size if max_results is None else min(self.page_size, max_results - len(results))
            page = self._call(what, lambda: search(limit, len(results)))
            if not isinstance(page, list) or not all(isinstance(item, dict) for item in page):
                raise NotDicomAnswerError(f"{what}: the server answered JSON that is not a list of DICOM data sets; "
                                          f"check that {self.connection.url} is the DICOMweb root")
            if page and page == previous:  # a server that ignores offset would loop for ever
                self._warn(f"{what}: the server ignores 'offset' and returned the same page twice; the list may be truncated")
                return results
            previous = page
            results.extend(keep(item) for item in page)
            server_says_more = bool(self._server_warnings)
            if not page or (len(page) < limit and not server_says_more):
                return results
        more = self._call(what, lambda: search(1, max_results)) if max_results is not None else []
        if more:  # one more result exists past the limit: say the list is cut
            self._warn(f"{what}: stopped at {max_results} results and the server has more; the list is truncated: "
                       "narrow the query or raise --max-results")
        return results[:max_results] if max_results is not None else results

    def search_series(self, query: PacsQuery, max_results: int | None = None) -> list[SeriesRef]:
        """The series matching ``query``, every page of them (or the first ``max_results``)."""
        filters = query.filters()

        def page(limit: int, offset: int) -> list:
            return self._client().search_for_series(search_filters=filters, fields=list(SERIES_FIELDS), limit=limit, offset=offset)

        found = [SeriesRef.from_json(item) for item in self._search("QIDO-RS series search", page, max_results)]
        refs = [ref for ref in found if ref.study_uid and ref.series_uid]
        if len(refs) < len(found):
            self._warn(f"{len(found) - len(refs)} series result(s) without Study or Series Instance UID were ignored")
        return refs

    def instance_count(self, ref: SeriesRef) -> int | None:
        """How many instances the PACS counts in the series now (a series-level QIDO: cheap, unlike listing them)."""
        query = PacsQuery(study_uid=ref.study_uid, series_uid=ref.series_uid)
        found = [r for r in self.search_series(query) if r.series_uid == ref.series_uid]
        return found[0].instances if found else 0

    def instance_uids(self, study_uid: str, series_uid: str) -> list[str]:
        """The SOP Instance UIDs of a series, every page of them ([] for an unknown series)."""

        def page(limit: int, offset: int) -> list:
            return self._client().search_for_instances(study_uid, series_uid, fields=["SOPInstanceUID"], limit=limit, offset=offset)

        try:
            uids = self._search(f"QIDO-RS instance list of series {series_uid}", page, keep=lambda item: json_value(item, "00080018"))
        except PacsNotFoundError:
            return []
        return [uid for uid in uids if uid]

    def _get_parts(self, url: str, on_part: Callable[[bytearray], None]) -> int:
        """GET ``url`` and hand each instance of the answer, in memory as soon as it is whole, to ``on_part``."""
        self._client()  # this thread's session
        count = 0
        with self._local.session.get(url, headers={"Accept": _ACCEPT_AS_STORED}, stream=True,
                                     timeout=self.connection.timeout_s) as response:
            response.raise_for_status()
            for part in stream_parts(response, self._chunk):
                on_part(part)
                del part  # not held while the next one arrives
                count += 1
        return count

    def fetch_to(self, ref: SeriesRef, sop_uid: str, path: Path) -> int:
        """Write one instance, as stored on the PACS, to ``path`` (WADO-RS); the bytes written.

        One instance is held in memory. A connection dropped half way is retried from the start of
        this instance only.
        """
        url = f"{self._base()}/studies/{ref.study_uid}/series/{ref.series_uid}/instances/{sop_uid}"

        def fetch() -> int:
            if self._get_parts(url, path.write_bytes) != 1:
                raise NotDicomAnswerError(f"WADO-RS retrieve of instance {sop_uid}: the answer holds no instance")
            return path.stat().st_size

        return self._call(f"WADO-RS retrieve of instance {sop_uid}", fetch)

    def stream_series(self, ref: SeriesRef, on_part: Callable[[bytearray], None]) -> int:
        """Retrieve a whole series in one request, each instance handed to ``on_part`` (in memory) as soon
        as it is complete; the number of instances. Tried once: after a dropped connection the caller
        fetches what is missing instance by instance.
        """
        url = f"{self._base()}/studies/{ref.study_uid}/series/{ref.series_uid}"
        once = RetryPolicy(attempts=1)
        try:
            return with_retries(lambda: self._get_parts(url, on_part), f"WADO-RS retrieve of series {ref.series_uid}", once)
        except ValueError as err:
            raise NotDicomAnswerError(f"WADO-RS retrieve of series {ref.series_uid}: the server did not answer DICOM ({err}); "
                                      f"check that {self.connection.url} is the DICOMweb root") from err

    def _base(self) -> str:
        return self.connection.url.rstrip("/")

    def store(self, datasets: Iterable[Dataset], what: str = "STOW-RS") -> None:
        """Store instances (STOW-RS); each must have a preamble and file meta (see ``sink.part10_bytes``)."""
        datasets = list(datasets)
        answer = self._call(what, lambda: self._client().store_instances(datasets))
        failed = answer.get("FailedSOPSequence") if isinstance(answer, Dataset) else None
        if failed:
            reasons = sorted({str(item.get("FailureReason", "?")) for item in failed})
            raise PacsError(f"{what}: the PACS refused {len(failed)} instance(s) (failure reason(s) {', '.join(reasons)}, "
                            "PS3.18 Table I.2-3); check the files with `scalpel dicom inspect`")


def stream_parts(response, chunk_bytes: int = 1 << 17) -> Iterator[bytearray]:
    """Each part of a ``multipart/related`` answer (or a bare ``application/dicom`` one), in memory,
    as soon as it is complete. One part and one chunk are held at a time, whatever the number of parts.

    A part that declares its Content-Length (Orthanc's do) is read straight into a buffer of that
    size, with no search for the boundary in its bytes; otherwise the boundary ends it.

    Raises:
        ValueError: the answer is neither (not DICOM), or a part is not followed by the boundary.
            requests' ChunkedEncodingError: it ended in the middle of a part (a cut connection).
    """
    kind = response.headers.get("Content-Type", "")
    media = kind.split(";")[0].strip().lower()
    if media == "application/dicom":
        yield bytearray(b"".join(response.iter_content(chunk_size=chunk_bytes)))
        return
    boundary = next((p.split("=", 1)[1].strip().strip('"') for p in kind.split(";")[1:]
                     if p.strip().lower().startswith("boundary=")), "")
    if media != "multipart/related" or not boundary:
        raise ValueError(f"answer of type {media or 'unknown'!r} is not multipart/related DICOM")
    reader = _Reader(response, chunk_bytes)
    delimiter = b"\r\n--" + boundary.encode()
    reader.skip_past(delimiter[2:], "the first boundary")
    while True:
        reader.fill(2)
        if reader.pending.startswith(b"--"):
            return  # the closing delimiter
        head = reader.skip_past(b"\r\n\r\n", "the headers of a part")
        length = next((int(v) for k, _, v in (line.partition(b":") for line in head.split(b"\r\n"))
                       if k.strip().lower() == b"content-length" and v.strip().isdigit()), None)
        part = reader.read_exactly(length) if length is not None else reader.read_until(delimiter)
        if length is not None:
            reader.fill(len(delimiter))
            if not reader.pending.startswith(delimiter):
                raise ValueError("a part is longer than its Content-Length says")
            del reader.pending[:len(delimiter)]
        yield part
        part = None  # not held while the next one arrives


class _Reader:
    """The body of an answer read in chunks, with what was read and not used yet in ``pending``."""

    def __init__(self, response, chunk_bytes: int):
        self._read = lambda n: response.raw.read(n, decode_content=True)
        self._chunk = chunk_bytes
        self.pending = bytearray()

    def fill(self, size: int) -> None:
        while len(self.pending) < size:
            chunk = self._read(self._chunk)
            if not chunk:
                self._cut()
            self.pending += chunk

    def skip_past(self, marker: bytes, what: str) -> bytes:
        """Consume up to and including ``marker``; what came before it."""
        start = 0
        while (at := self.pending.find(marker, start)) < 0:
            if len(self.pending) > 1 << 16:
                raise ValueError(f"no end of {what} in 64 KiB: not a multipart DICOM answer")
            start = max(0, len(self.pending) - len(marker) + 1)
            self.fill(len(self.pending) + 1)
        before = bytes(self.pending[:at])
        del self.pending[:at + len(marker)]
        return before

    def read_exactly(self, length: int) -> bytearray:
        part = bytearray(length)
        have = min(length, len(self.pending))
        part[:have] = self.pending[:have]
        del self.pending[:have]
        view = memoryview(part)
        while have < length:
            chunk = self._read(min(self._chunk, length - have))
            if not chunk:
                self._cut()
            view[have:have + len(chunk)] = chunk
            have += len(chunk)
        return part

    def read_until(self, delimiter: bytes) -> bytearray:
        start = 0
        while (end := self.pending.find(delimiter, start)) < 0:
            start = max(0, len(self.pending) - len(delimiter) + 1)
            self.fill(len(self.pending) + 1)
        part = self.pending[:end]
        del self.pending[:end + len(delimiter)]
        return part

    @staticmethod
    def _cut():
        import requests

        raise requests.exceptions.ChunkedEncodingError("the answer ended in the middle of an instance")

"""A PACS over DIMSE (PS3.4, PS3.7) with pynetdicom, for archives without DICOMweb.

C-FIND (Study Root) finds series and lists their instances; each instance is fetched with C-GET
on the same association that receives it; a PACS that refuses C-GET is asked with C-MOVE to send
the instance to a C-STORE receiver this object runs in-process (``move_aet`` on ``move_port``,
which the PACS must know as a DICOM modality). C-STORE pushes. DIMSE has no credentials: the
PACS admits callers by AE title (and address), which is also what its administrator configures.
DIMSE has no paging either: ``max_results`` cuts the list, with a warning when it does.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset

from scalpel.medical.pacs.errors import PacsAuthError, PacsError, PacsNotFoundError
from scalpel.medical.pacs.query import PacsQuery, SeriesRef

log = logging.getLogger("scalpel.medical.pacs")
_PENDING = (0xFF00, 0xFF01)
#: Storage SOP classes accepted from a C-GET (a C-GET needs one presentation context per class).
_STORAGE = ("CTImageStorage", "EnhancedCTImageStorage", "MRImageStorage", "EnhancedMRImageStorage", "SegmentationStorage",
            "PositronEmissionTomographyImageStorage", "SecondaryCaptureImageStorage", "UltrasoundImageStorage",
            "ComputedRadiographyImageStorage", "DigitalXRayImageStorageForPresentation", "RTStructureSetStorage",
            "EnhancedPETImageStorage", "XRayAngiographicImageStorage", "NuclearMedicineImageStorage")


@dataclass
class DimsePacs:
    """Search, retrieve and store on a DIMSE peer.

    Args:
        host, port, called_aet: the PACS. calling_aet: our AE title.
        move_aet, move_port: where C-MOVE results are sent (the in-process receiver); None: no C-MOVE.
        use_get: try C-GET first (False: straight to C-MOVE).
    """

    host: str
    port: int
    called_aet: str
    calling_aet: str = "SCALPEL"
    move_aet: str | None = None
    move_port: int | None = None
    timeout_s: float = 30.0
    use_get: bool = True

    def __post_init__(self) -> None:
        self.warnings: list[str] = []
        self._receiver = None
        self._received: dict[str, Dataset] = {}
        self._arrived = threading.Condition()
        self._get_refused = not self.use_get

    @classmethod
    def from_address(cls, address: str, **kwargs) -> DimsePacs:
        """From ``AE@host:port``."""
        aet, _, place = address.partition("@")
        host, _, port = place.rpartition(":")
        if not (aet and host and port.isdigit()):
            raise PacsError(f"DIMSE address {address!r} is not AE@host:port (e.g. ORTHANC@pacs.example.org:4242)")
        return cls(host=host, port=int(port), called_aet=aet, **kwargs)

    def _associate(self, contexts: list[str], roles: bool = False, handlers=None):
        from pynetdicom import AE, build_role, sop_class

        ae = AE(ae_title=self.calling_aet)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout_s
        for name in contexts:
            ae.add_requested_context(getattr(sop_class, name))
        ext = [build_role(getattr(sop_class, name), scp_role=True) for name in _STORAGE] if roles else []
        assoc = ae.associate(self.host, self.port, ae_title=self.called_aet, ext_neg=ext, evt_handlers=handlers or [])
        if assoc.is_rejected:
            raise PacsAuthError(f"the PACS {self.called_aet}@{self.host}:{self.port} rejected the association from AE "
                                f"{self.calling_aet}; ask its administrator to admit this AE title and address")
        if not assoc.is_established:
            raise PacsError(f"no DICOM association with {self.called_aet}@{self.host}:{self.port} (aborted or no answer "
                            f"within {self.timeout_s:.0f} s); check host, port and called AE title")
        return assoc

    def _find(self, identifier: Dataset) -> list[Dataset]:
        assoc = self._associate(["StudyRootQueryRetrieveInformationModelFind"])
        found = []
        try:
            from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND

            for status, answer in assoc.send_c_find(identifier, FIND):
                code = int(getattr(status, "Status", -1))
                if code in _PENDING and answer is not None:
                    found.append(answer)
                elif code != 0x0000:
                    raise PacsError(f"C-FIND failed (status 0x{code & 0xFFFF:04X}); check the query and that the PACS allows C-FIND from {self.calling_aet}")
        finally:
            assoc.release()
        return found

    def search_series(self, query: PacsQuery, max_results: int | None = None) -> list[SeriesRef]:
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "SERIES"
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "Modality", "SeriesDescription", "PatientID",
                        "StudyDate", "AccessionNumber", "NumberOfSeriesRelatedInstances"):
            setattr(identifier, keyword, "")
        for keyword, value in query.filters().items():
            setattr(identifier, keyword, value)
        found = [SeriesRef(study_uid=str(a.get("StudyInstanceUID", "")), series_uid=str(a.get("SeriesInstanceUID", "")),
                           modality=str(a.get("Modality", "")), description=str(a.get("SeriesDescription", "")),
                           patient_id=str(a.get("PatientID", "")), study_date=str(a.get("StudyDate", "")),
                           instances=int(a.NumberOfSeriesRelatedInstances) if str(a.get("NumberOfSeriesRelatedInstances", "")).strip() else None)
                 for a in self._find(identifier)]
        found = [ref for ref in found if ref.study_uid and ref.series_uid]
        if max_results is not None and len(found) > max_results:
            message = f"C-FIND: {len(found)} series match, kept the first {max_results}; the list is truncated"
            log.warning(message)
            self.warnings.append(message)
            found = found[:max_results]
        return found

    def instance_uids(self, study_uid: str, series_uid: str) -> list[str]:
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "IMAGE"
        identifier.StudyInstanceUID, identifier.SeriesInstanceUID, identifier.SOPInstanceUID = study_uid, series_uid, ""
        return [uid for uid in (str(a.get("SOPInstanceUID", "")) for a in self._find(identifier)) if uid]

    def fetch_to(self, ref: SeriesRef, sop_uid: str, path: Path) -> int:
        """Write one instance to ``path`` as a Part 10 file; the bytes written."""
        from scalpel.medical.pacs.sink import as_part10

        as_part10(self.retrieve_instance(ref, sop_uid)).save_as(path, enforce_file_format=True)
        return path.stat().st_size

    def retrieve_instance(self, ref: SeriesRef, sop_uid: str) -> Dataset:
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "IMAGE"
        identifier.StudyInstanceUID, identifier.SeriesInstanceUID, identifier.SOPInstanceUID = ref.study_uid, ref.series_uid, sop_uid
        if not self._get_refused:
            got = self._get(identifier)
            if got is not None:
                return got
            self._get_refused = True
            log.info("the PACS refused C-GET; falling back to C-MOVE to %s", self.move_aet)
        return self._move(identifier, sop_uid)

    def _get(self, identifier: Dataset) -> Dataset | None:
        """The instance by C-GET; None when the PACS refuses C-GET (so C-MOVE is tried)."""
        from pynetdicom import evt
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet as GET

        received: list[Dataset] = []

        def on_store(event):
            ds = event.dataset
            ds.file_meta = event.file_meta
            received.append(ds)
            return 0x0000

        try:
            assoc = self._associate(["StudyRootQueryRetrieveInformationModelGet", *_STORAGE], roles=True,
                                    handlers=[(evt.EVT_C_STORE, on_store)])
        except PacsAuthError:
            return None
        try:
            if not any(cx.abstract_syntax == GET for cx in assoc.accepted_contexts):
                return None
            codes = [int(getattr(status, "Status", -1)) for status, _ in assoc.send_c_get(identifier, GET)]
        finally:
            assoc.release()
        if received:
            return received[0]
        if codes and codes[-1] in (0xA701, 0xA702, 0xA900, 0xAA00, 0x0124, 0x0122, 0xC000) or -1 in codes:
            return None  # refused or not supported: try C-MOVE
        raise PacsNotFoundError(f"C-GET of instance {identifier.SOPInstanceUID} returned nothing (status {codes}); it is not on the PACS")

    def _move(self, identifier: Dataset, sop_uid: str) -> Dataset:
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove as MOVE

        if not (self.move_aet and self.move_port):
            raise PacsError("the PACS refused C-GET and no C-MOVE destination is set; give --move-aet and --move-port "
                            "(an AE title the PACS knows, pointing at this machine)")
        self._start_receiver()
        assoc = self._associate(["StudyRootQueryRetrieveInformationModelMove"])
        try:
            codes = [int(getattr(status, "Status", -1)) for status, _ in assoc.send_c_move(identifier, self.move_aet, MOVE)]
        finally:
            assoc.release()
        with self._arrived:
            self._arrived.wait_for(lambda: sop_uid in self._received, timeout=self.timeout_s)
            ds = self._received.pop(sop_uid, None)
        if ds is None:
            if codes and codes[-1] == 0x0000:
                raise PacsError(f"C-MOVE of instance {sop_uid} succeeded but nothing arrived on port {self.move_port}; check "
                                f"that the PACS sends {self.move_aet} to this machine and port")
            raise PacsNotFoundError(f"C-MOVE of instance {sop_uid} failed (status {codes}); it is not on the PACS")
        return ds

    def _start_receiver(self) -> None:
        with self._arrived:  # two workers must not both start it
            if self._receiver is None:
                self._receiver = self._serve()

    def _serve(self):
        from pynetdicom import AE, AllStoragePresentationContexts, evt

        def on_store(event):
            ds = event.dataset
            ds.file_meta = event.file_meta
            with self._arrived:
                self._received[str(ds.SOPInstanceUID)] = ds
                self._arrived.notify_all()
            return 0x0000

        ae = AE(ae_title=self.move_aet)
        ae.supported_contexts = AllStoragePresentationContexts
        try:
            return ae.start_server(("127.0.0.1" if self.host in ("127.0.0.1", "localhost") else "", self.move_port),
                                   block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
        except OSError as err:
            raise PacsError(f"cannot receive C-MOVE results on port {self.move_port} ({err.strerror}); choose a free port "
                            "with --move-port (and tell the PACS)") from err

    def store(self, datasets: Iterable[Dataset], what: str = "C-STORE") -> None:
        datasets = list(datasets)
        classes = sorted({str(ds.SOPClassUID) for ds in datasets})
        from pynetdicom import AE

        ae = AE(ae_title=self.calling_aet)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout_s
        for uid in classes:
            ae.add_requested_context(uid)
        assoc = ae.associate(self.host, self.port, ae_title=self.called_aet)
        if not assoc.is_established:
            raise PacsError(f"{what}: no association with {self.called_aet}@{self.host}:{self.port}; check the address and AE titles")
        try:
            for ds in datasets:
                status = assoc.send_c_store(ds)
                code = int(getattr(status, "Status", -1))
                if code not in (0x0000, 0xB000, 0xB007, 0xB006):
                    raise PacsError(f"{what}: the PACS refused instance {ds.SOPInstanceUID} (status 0x{code & 0xFFFF:04X})")
        finally:
            assoc.release()

    def close(self) -> None:
        if self._receiver is not None:
            self._receiver.shutdown()
            self._receiver = None

"""What a de-identified pull must remember to send results back: the original UIDs and patient,
sealed with the de-identification key, so only the key's holder can map a SEG back.

A SEG made on de-identified images references pseudonym UIDs and a pseudonym patient; filed like
that, the hospital's PACS would put it under a patient that does not exist. For each series a
de-identified pull writes ``OUT/.scalpel-originals/<series pseudonym>.json``: the original UIDs
(study, series, frame of reference, every instance the PACS listed) and the patient/study
attributes a SEG copies, encrypted and authenticated with keys derived from the de-identification
key (HMAC-SHA256 in counter mode, then HMAC-SHA256 over nonce and ciphertext: encrypt-then-MAC,
standard library only). The key itself is never written, and the data folder alone reveals nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from pathlib import Path

from pydicom.dataset import Dataset

from scalpel.core.errors import DataError
from scalpel.medical.dicom.deid import KeyFileError, Pseudonyms
from scalpel.core.files import atomic_write

FOLDER = ".scalpel-originals"
#: Patient and study attributes a SEG copies from its source images (the ones mapped back).
RESTORED = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
            "ReferringPhysicianName", "AccessionNumber", "StudyID")


def _keys(key: str) -> tuple[bytes, bytes]:
    root = key.encode()
    return (hmac.new(root, b"scalpel-originals-encrypt", hashlib.sha256).digest(),
            hmac.new(root, b"scalpel-originals-authenticate", hashlib.sha256).digest())


def _stream(key: bytes, nonce: bytes, length: int) -> bytes:
    blocks = (hmac.new(key, nonce + i.to_bytes(8, "big"), hashlib.sha256).digest() for i in range((length + 31) // 32))
    return b"".join(blocks)[:length]


def seal(key: str, record: dict) -> str:
    enc, mac = _keys(key)
    nonce = secrets.token_bytes(16)
    plain = json.dumps(record, sort_keys=True).encode()
    cipher = bytes(a ^ b for a, b in zip(plain, _stream(enc, nonce, len(plain))))
    tag = hmac.new(mac, nonce + cipher, hashlib.sha256).digest()
    return (nonce + tag + cipher).hex()


def unseal(key: str, token: str) -> dict:
    enc, mac = _keys(key)
    blob = bytes.fromhex(token)
    nonce, tag, cipher = blob[:16], blob[16:48], blob[48:]
    if not hmac.compare_digest(tag, hmac.new(mac, nonce + cipher, hashlib.sha256).digest()):
        raise KeyFileError("the originals of this pull were sealed with another key; give the key file the pull used")
    return json.loads(bytes(a ^ b for a, b in zip(cipher, _stream(enc, nonce, len(cipher)))))


def originals_of(ds: Dataset, with_attrs: bool = True) -> dict:
    """The original UIDs and attributes (None unless ``with_attrs``) of one instance, read before it is de-identified."""
    uids = [str(ds.get(k, "")) for k in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "SOPInstanceUID")]
    attrs = {k: str(ds.get(k, "") or "") for k in RESTORED} if with_attrs else None
    return {"uids": [u for u in uids if u], "attrs": attrs}


def write_originals(out: Path, key: str, series_pseudonym: str, uids: set[str], attrs: dict | None) -> None:
    """Seal a series' originals, merged with what an earlier run of the same pull sealed."""
    path = out / FOLDER / f"{series_pseudonym}.json"
    if path.is_file():
        before = unseal(key, json.loads(path.read_text())["sealed"])
        uids = uids | set(before["uids"])
        attrs = attrs or before.get("attrs")
    with atomic_write(path, "w") as handle:
        json.dump({"sealed": seal(key, {"uids": sorted(uids), "attrs": attrs or {}})}, handle)


def restore_originals(seg: Dataset, pulled: Path, key: str) -> Dataset:
    """Map a SEG made on a de-identified pull back to the original UIDs and patient, in place.

    Every UID the pull pseudonymized (study, series, frame of reference, instances), wherever it
    appears in ``seg`` (references, per-frame source images), is replaced by the original, and the
    patient/study attributes by the originals. The SEG's own series and instance UIDs stay new.

    Raises:
        DataError: no series of ``pulled`` is the one the SEG references. KeyFileError: another key.
    """
    referenced = {str(item.SeriesInstanceUID) for item in seg.get("ReferencedSeriesSequence", [])}
    pseudonyms = Pseudonyms(key)
    records = [unseal(key, json.loads((pulled / FOLDER / f"{uid}.json").read_text())["sealed"])
               for uid in referenced if (pulled / FOLDER / f"{uid}.json").is_file()]
    if not records:
        raise DataError(f"the SEG references series {sorted(referenced)}, which no de-identified pull in {pulled} holds; "
                        "give the folder the images were pulled into (with --deid)")
    inverse = {pseudonyms.uid(u): u for record in records for u in record["uids"]}
    _replace_uids(seg, inverse)
    for keyword, value in records[0]["attrs"].items():
        setattr(seg, keyword, value)
    for keyword in ("PatientIdentityRemoved", "DeidentificationMethod", "DeidentificationMethodCodeSequence"):
        if keyword in seg:
            delattr(seg, keyword)
    return seg


def _replace_uids(ds: Dataset, inverse: dict[str, str]) -> None:
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                _replace_uids(item, inverse)
        elif elem.VR == "UI" and elem.value:
            if elem.VM > 1:
                elem.value = [inverse.get(str(v), str(v)) for v in elem.value]
            else:
                elem.value = inverse.get(str(elem.value), elem.value)

"""Which elements de-identification can leave as read, undecoded (see :func:`left_alone`).

Decoding every element of a file (pydicom turns raw bytes into Python values on first access)
was most of the time the PS3.15 profile took; most elements of an image are ones the profile
leaves alone, and an element never decoded is written back byte for byte. Only elements whose
bytes pydicom would write back unchanged after decoding are skipped, so the output is the same
as when every element is decoded.
"""

from __future__ import annotations

from scalpel.medical.dicom.annex_e import BASIC_PROFILE_TAGS, repeating_group_action

_DATE_VRS = ("DA", "DT", "TM")
#: Written byte for byte as read, decoded or not (even lengths).
_BINARY_VRS = {"OB", "OW", "OF", "OD", "OL", "OV", "US", "SS", "UL", "SL", "UV", "SV"}


def left_alone(raw, tag: int) -> bool:
    """Whether the element ``raw`` (as read, not decoded) needs no look: no action in the table, a
    VR read from the file that is neither a date/time nor a sequence (implicit VR and UN are not
    trusted), and bytes that pydicom would write back unchanged once decoded. Such an element is
    never decoded and is written as read: the output is the same, and most of the time saved."""
    if tag >> 16 & 1 or not getattr(raw, "is_raw", False) or tag in BASIC_PROFILE_TAGS or repeating_group_action(tag):
        return False
    vr, value = raw.VR, raw.value
    if vr is None or vr in _DATE_VRS or vr in ("UN", "SQ", "FL", "FD", "AT") or value is None or len(value) % 2:
        return False
    if vr in _BINARY_VRS or not value:
        return True
    if not value.isascii() or b"\x1b" in value:  # decoding and encoding again may not give these bytes back
        return False
    pad = b"\0" if vr == "UI" else b" "
    body = value[:-1] if value.endswith(pad) else value
    return not (body[:1].isspace() or body[-1:].isspace() or b"\0" in body or b" \\" in body or b"\\ " in body)

"""The allow-list of private tags that de-identification keeps (``DeidOptions.safe_private_tags``).

A private element is named by its odd group, its private creator and its offset in the creator's
block (``"0009,ACME 1.0,10"``), never by its full tag: the block an element lands in depends on
the other creators in the file (PS3.5 7.8.1).
"""

from __future__ import annotations

from pydicom.dataelem import DataElement


def parse_safe_private(entry: str) -> tuple[int, str, int] | None:
    """``"gggg,creator,ee"`` (a private tag kept by ``safe_private_tags``) as (group, creator, element offset); None if malformed."""
    parts = [p.strip() for p in str(entry).split(",")]
    if len(parts) != 3:
        return None
    try:
        group, offset = int(parts[0], 16), int(parts[2], 16)
    except ValueError:
        return None
    if group % 2 == 0 or not parts[1] or not 0 <= offset <= 0xFF:
        return None
    return group, parts[1], offset


def is_safe_private(elem: DataElement, safe: set[tuple[int, str, int]]) -> bool:
    """Whether the private element ``elem`` (or its creator) is on the allow-list ``safe``."""
    if not safe:
        return False
    group, element = elem.tag.group, elem.tag.element
    if 0x10 <= element <= 0xFF:  # a private creator: keep it if any of its block is kept
        return any(g == group and c == str(elem.value).strip() for g, c, _ in safe)
    creator = getattr(elem, "private_creator", None)
    return creator is not None and (group, str(creator).strip(), element & 0xFF) in safe

"""A PACS query as a site for ``scalpel medical adapt``: pull, then lay the series out as a site folder.

    scalpel medical adapt BASE "https://pacs/dicom-web?patient_id=P1&modality=CT" --out RUN --key-file KEY

The query (the URL's parameters: ``patient_id``, ``study_uid``, ``series_uid``, ``modality``,
``date_from``, ``date_to``, ``accession``) is pulled, de-identified on the fly with the key (the
default for adaptation), into ``RUN-pacs/pull``; then ``RUN-pacs/site`` is laid out as a site
(:mod:`scalpel.medical.site`): each image series becomes a case ``dicom/<series>/`` and its label is
a DICOM SEG found on the PACS that references it (also pulled, by series UID), or a file of a
labels folder named by the series' original Series Instance UID (``<UID>.nii.gz`` / ``.dcm``). Image
series without a label are left out and listed. Files are hard links into the pull (copies
across file systems), so the site costs no space.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import pydicom

from scalpel.core.errors import DataError
from scalpel.medical.dicom.deid import DeidOptions
from scalpel.medical.pacs.pull import Pacs, pull
from scalpel.medical.pacs.query import PacsQuery

LABEL_SUFFIXES = (".nii.gz", ".nii", ".dcm")


@dataclass
class PacsSite:
    site: Path
    cases: list[str] = field(default_factory=list)
    unlabelled: list[str] = field(default_factory=list)  # image series without a SEG or label file


def split_site_url(url: str) -> tuple[str, PacsQuery]:
    """``https://pacs/dicom-web?patient_id=P1&modality=CT`` -> (DICOMweb root, query)."""
    parts = urlsplit(url)
    params = dict(parse_qsl(parts.query))
    allowed = set(PacsQuery.__dataclass_fields__)
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise DataError(f"unknown PACS query parameter(s) {unknown} in the site URL; use {sorted(allowed)}")
    return urlunsplit(parts._replace(query="")), PacsQuery(**params)


def pull_site(pacs: Pacs, query: PacsQuery, folder: str | os.PathLike, *, deid: DeidOptions | None,
              labels: str | os.PathLike | None = None, workers: int = 4) -> PacsSite:
    """Pull ``query`` (and the SEGs referencing its series) into ``folder/pull``; lay out ``folder/site``."""
    folder = Path(folder)
    series = list(pull(pacs, query, folder / "pull", deid=deid, workers=workers).series)
    if query.modality and query.modality != "SEG":  # the labels are SEG series of the same studies
        seg_query = replace(query, modality="SEG")
        if pacs.search_series(seg_query):
            series += pull(pacs, seg_query, folder / "pull", deid=deid, workers=workers).series
    images = [s for s in series if s.modality != "SEG"]
    segs = [s for s in series if s.modality == "SEG"]
    label_of: dict[str, Path] = {}
    for seg_series in segs:
        for path in seg_series.folder.glob("*.dcm"):
            header = pydicom.dcmread(path, stop_before_pixels=True)
            for item in header.get("ReferencedSeriesSequence", []):
                label_of.setdefault(str(item.SeriesInstanceUID), path)
    if labels is not None:
        original = _original_series(images, folder / "pull", deid)
        for series_uid, source_uid in original.items():
            found = next((Path(labels) / f"{source_uid}{s}" for s in LABEL_SUFFIXES if (Path(labels) / f"{source_uid}{s}").is_file()), None)
            if found is not None:
                label_of[series_uid] = found
    out = PacsSite(folder / "site")
    for series in images:
        label = label_of.get(series.series_uid)
        if label is None:
            out.unlabelled.append(series.series_uid)
            continue
        case = out.site / "dicom" / series.series_uid
        case.mkdir(parents=True, exist_ok=True)
        for path in series.folder.glob("*.dcm"):
            _link(path, case / path.name)
        suffix = ".nii.gz" if label.name.endswith(".nii.gz") else label.suffix
        _link(label, out.site / "labels" / f"{series.series_uid}{suffix}")
        out.cases.append(series.series_uid)
    if not out.cases:
        raise DataError(f"none of the {len(images)} image series pulled for {query.filters()} has a label: put a DICOM SEG "
                        "referencing each series on the PACS, or give --labels DIR with <original Series Instance UID>.nii.gz files")
    return out


def _original_series(images: list, pulled: Path, deid: DeidOptions | None) -> dict[str, str]:
    """Series UID on disk -> original Series Instance UID (through the key's sealed originals when de-identified)."""
    if deid is None:
        return {s.series_uid: s.series_uid for s in images}
    import json

    from scalpel.medical.dicom.deid import Pseudonyms
    from scalpel.medical.pacs.originals import FOLDER, unseal

    pseudonym = Pseudonyms(deid.key).uid
    out = {}
    for s in images:
        record = unseal(deid.key, json.loads((pulled / FOLDER / f"{s.series_uid}.json").read_text())["sealed"])
        out[s.series_uid] = next(u for u in record["uids"] if pseudonym(u) == s.series_uid)
    return out


def _link(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        return
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def site_from_arguments(url: str, flags: list[str]) -> tuple[str, list[str]]:
    """For ``scalpel medical adapt BASE URL --out RUN ...``: pull the URL's query into ``RUN-pacs/`` and
    return that site folder and the flags left for the run (``--key-file``, ``--create-key-file``,
    ``--labels``, ``--auth-file`` are taken out). De-identification is on: the key file is required."""
    import argparse

    from scalpel.medical.dicom.deid import KeyFileError, read_key_file
    from scalpel.medical.pacs.cli import open_pacs

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--key-file", type=Path)
    parser.add_argument("--create-key-file", action="store_true")
    parser.add_argument("--labels", type=Path)
    parser.add_argument("--auth-file", type=Path)
    parser.add_argument("--output-dir", type=Path)
    ours, rest = parser.parse_known_args(flags)
    if ours.key_file is None:
        raise KeyFileError("a PACS site is pulled de-identified: give --key-file PATH (with --create-key-file the first "
                           "time), kept outside the run folder")
    root, query = split_site_url(url)
    deid = DeidOptions(retain_longitudinal_dates=True, key=read_key_file(ours.key_file, create=ours.create_key_file))
    folder = Path(f"{ours.output_dir}-pacs")
    site = pull_site(open_pacs(ours, root), query, folder, deid=deid, labels=ours.labels)
    if site.unlabelled:
        print(f"{len(site.unlabelled)} series without a label left out: {', '.join(site.unlabelled)}")
    return str(site.site), [*rest, "--output-dir", str(ours.output_dir)]

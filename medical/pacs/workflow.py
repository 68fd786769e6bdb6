"""The PACS in the site workflow: send a predicted SEG back to the PACS its images came from.

    scalpel medical predict --base BASE --adapter RUN/adapter PULLED/<study>/<series> --seg-out pred.dcm \\
        --push https://pacs/dicom-web [--key-file KEY]

When the series was pulled with ``--deid``, the SEG references pseudonyms; it is mapped back to
the original UIDs and patient through the key (:func:`~scalpel.medical.pacs.originals.restore_originals`)
before it leaves, so the PACS files it with the images it segments. The SEG written to disk keeps
the pseudonyms: only what is sent to the hospital's own PACS carries identity again.
"""

from __future__ import annotations

import json
from pathlib import Path

import pydicom

from scalpel.core.errors import ScalpelError
from scalpel.medical.pacs.push import PushReport, PushTarget, push_datasets
from scalpel.medical.pacs.sink import STATE_NAME


def pull_folder_of(series_dir: Path) -> tuple[Path, bool] | None:
    """The folder a ``scalpel dicom pull`` wrote ``series_dir`` into, and whether it de-identified; None if none did."""
    for folder in [series_dir, *series_dir.resolve().parents]:
        state = folder / STATE_NAME
        if state.is_file():
            return folder, bool(json.loads(state.read_text()).get("settings", {}).get("deidentified"))
    return None


def push_prediction(pacs: PushTarget, seg_path: Path, series_dir: Path, key: str | None = None) -> PushReport:
    """Push the SEG at ``seg_path``, predicted on ``series_dir``, mapped back to the original UIDs
    when ``series_dir`` comes from a de-identified pull (``key``: that pull's key)."""
    seg = pydicom.dcmread(seg_path)
    pulled = pull_folder_of(Path(series_dir))
    if pulled is not None and pulled[1]:
        if key is None:
            raise ScalpelError(f"{series_dir} was pulled de-identified; give the pull's --key-file so the SEG is sent back "
                               "under the original patient and UIDs (without it the PACS would file it under a pseudonym)")
        from scalpel.medical.pacs.originals import restore_originals

        restore_originals(seg, pulled[0], key)
    return push_datasets(pacs, [seg])

"""``scalpel dicom inspect DIR`` and ``scalpel dicom deid IN OUT``.

Only argparse is imported here: each handler imports what it uses when it runs (pydicom,
numpy), so the command loads no MONAI, transformers or torch of its own - neither inspecting
nor de-identifying needs them, and they take seconds to import.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from scalpel.medical.dicom.scan import Inventory


def register(commands: argparse._SubParsersAction) -> None:
    dicom = commands.add_parser("dicom", help="inspect and de-identify DICOM folders, pull from and push to a PACS")
    sub = dicom.add_subparsers(dest="dicom_command", metavar="ACTION", required=True)
    inspect = sub.add_parser("inspect", help="list patients, studies, series and problems found",
                             description="Reads every file under PATH; truncated or damaged files (pixel data cut short, "
                                         "compressed frames that do not decode) are listed as errors.")
    inspect.add_argument("path", type=Path)
    inspect.add_argument("--json", action="store_true", help="print JSON instead of text")
    inspect.add_argument("--strict", action="store_true", help="stop at the first unreadable or damaged DICOM file")
    inspect.set_defaults(handler=_inspect)

    deid = sub.add_parser(
        "deid",
        help="de-identify a folder (PS3.15 Annex E Basic Profile)",
        description="Writes OUT/<patient pseudonym>/<study>/<series>/<instance>.dcm and an audit log OUT-deid-audit.csv beside OUT. "
                    "Run again with the same key file and options, an interrupted run continues where it stopped.",
    )
    deid.add_argument("input", type=Path)
    deid.add_argument("output", type=Path)
    deid.add_argument("--retain-dates", action="store_true", help="shift dates by a consistent per-patient offset instead of removing them")
    deid.add_argument("--max-shift-days", type=int, default=365)
    deid.add_argument("--keep-date", action="append", default=[], metavar="KEYWORD",
                      help="a DA/DT/TM attribute outside the profile table to keep unchanged (repeatable); all others are removed or shifted")
    deid.add_argument("--retain-device", action="store_true", help="keep device identity (serial numbers, station names)")
    deid.add_argument("--clean-descriptors", action="store_true", help="keep descriptions and comments, with identifiers taken out")
    deid.add_argument("--safe-private", action="append", default=[], metavar="GGGG,CREATOR,EE", help="private tag to keep (repeatable)")
    deid.add_argument("--allow-burned-in", action="store_true", help="process files flagged BurnedInAnnotation=YES (check them first)")
    deid.add_argument("--key-file", type=Path, help="file holding a secret: same key -> same UIDs, pseudonyms and date shifts across runs")
    deid.add_argument("--create-key-file", action="store_true", help="write a new random key to --key-file if it does not exist yet")
    deid.add_argument("--audit-log", type=Path, help="CSV audit log path (default: beside OUT)")
    deid.add_argument("--workers", type=int, default=None, help="files de-identified at once (default: up to 8)")
    deid.add_argument("--strict", action="store_true", help="stop at the first bad or refused file")
    deid.set_defaults(handler=_deid)

    from scalpel.medical.pacs.cli import register as register_pacs  # argparse only, like this module

    register_pacs(sub)


def _inspect(args: argparse.Namespace) -> int:
    from scalpel.medical.dicom.scan import scan_folder

    inventory = scan_folder(args.path, strict=args.strict, verify_pixels=True)
    if args.json:
        print(json.dumps(inventory.to_dict(), indent=2))
    else:
        print(format_inventory(inventory))
    return 0


def format_inventory(inventory: Inventory) -> str:
    lines = [f"{inventory.root}"]
    for patient, studies in inventory.patients().items():
        lines.append(f"patient {patient or '(no ID)'}")
        for study, series in studies.items():
            lines.append(f"  study {study}")
            for s in series:
                spacing = s.spacing()
                spacing_text = "x".join(f"{v:.3g}" for v in spacing) + " mm" if spacing else "spacing unknown"
                size = "x".join(str(v) for v in s.shape)
                lines.append(f"    {s.modality:<3} {size:<14} {spacing_text:<22} {s.description or '-'}  [{s.key}]")
                lines.extend(f"        problem: {p}" for p in s.problems)
    lines.append(f"series: {len(inventory.series)}; non-DICOM files skipped: {len(inventory.non_dicom)}; "
                 f"non-image objects: {len(inventory.non_image)}; dropped: {len(inventory.dropped)}; errors: {len(inventory.errors)}")
    lines.extend(f"dropped {p}: {why}" for p, why in inventory.dropped)
    lines.extend(f"error {why}" for _, why in inventory.errors)
    return "\n".join(lines)


def _deid(args: argparse.Namespace) -> int:
    from scalpel.medical.dicom.deid import DeidOptions
    from scalpel.medical.dicom.deid_folder import NothingDeidentifiedError, deidentify_folder

    options = DeidOptions(
        retain_longitudinal_dates=args.retain_dates,
        max_date_shift_days=args.max_shift_days,
        retain_device_identity=args.retain_device,
        clean_descriptors=args.clean_descriptors,
        safe_private_tags=tuple(args.safe_private),
        keep_date_attributes=tuple(args.keep_date),
        allow_burned_in_annotation=args.allow_burned_in,
        key=_key(args),
        strict=args.strict,
        workers=args.workers,
    )
    report = deidentify_folder(args.input, args.output, options, audit_log=args.audit_log)
    print(json.dumps(report.to_dict(), indent=2))
    if report.nothing_done():
        raise NothingDeidentifiedError(
            f"no file under {report.input_dir} could be de-identified ({report.summary()}); the reason for each file "
            f"is listed above and in {report.audit_log}"
        )
    return 0 if not report.errors else 1


def _key(args: argparse.Namespace) -> str | None:
    """The key from --key-file; None (a random key for this run only) without one."""
    from scalpel.medical.dicom.deid import KeyFileError, read_key_file

    if args.key_file is None:
        if args.create_key_file:
            raise KeyFileError("--create-key-file needs --key-file PATH: the file to write the new key to")
        return None
    if args.key_file.resolve().is_relative_to(args.output.resolve()):
        raise KeyFileError(f"key file {args.key_file} is inside the output folder {args.output}; the key must never travel "
                           "with the data it protects: keep it in a private place outside the output")
    return read_key_file(args.key_file, create=args.create_key_file)

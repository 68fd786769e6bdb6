"""``scalpel dicom pull SOURCE OUT`` and ``scalpel dicom push DEST PATH...``.

SOURCE/DEST is a DICOMweb root (``https://pacs.example.org/dicom-web``) or a DIMSE peer
(``AE@host:port``). Credentials come from the environment or ``--auth-file``, never from the
command line. Only argparse is imported until a command runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

_CREDENTIALS = ("credentials: SCALPEL_PACS_USER + SCALPEL_PACS_PASSWORD (basic) or SCALPEL_PACS_TOKEN (bearer) in the "
                "environment, or --auth-file; never on the command line")


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``pull`` and ``push`` to the ``scalpel dicom`` actions."""
    pull = sub.add_parser("pull", help="search a PACS and retrieve series to a folder (resumable, optionally de-identified)",
                          description="Retrieves every series matching the query into OUT/<study>/<series>/<instance>.dcm, "
                                      "instance by instance; run it again and it fetches only what is missing. " + _CREDENTIALS)
    pull.add_argument("source", help="DICOMweb root (http(s)://host/dicom-web) or DIMSE peer AE@host:port")
    pull.add_argument("output", type=Path)
    query = pull.add_argument_group("query (at least one)")
    query.add_argument("--patient-id", default="")
    query.add_argument("--study", default="", metavar="UID", help="Study Instance UID")
    query.add_argument("--series", default="", metavar="UID", help="Series Instance UID")
    query.add_argument("--modality", default="")
    query.add_argument("--date-from", default="", metavar="YYYYMMDD")
    query.add_argument("--date-to", default="", metavar="YYYYMMDD")
    query.add_argument("--accession", default="")
    pull.add_argument("--list", action="store_true", help="only list the matching series")
    pull.add_argument("--max-results", type=int, default=None, help="stop after this many series (a warning says if more exist)")
    pull.add_argument("--page-size", type=int, default=100, help="results per search request (limit/offset paging)")
    pull.add_argument("--workers", type=int, default=4, help="instances fetched at once")
    deid = pull.add_argument_group("de-identification on the fly (the PS3.15 profile and key file of `scalpel dicom deid`)")
    deid.add_argument("--deid", action="store_true", help="de-identify each instance before it touches the disk")
    deid.add_argument("--key-file", type=Path, help="the secret: same key, same pseudonyms and UIDs (required with --deid)")
    deid.add_argument("--create-key-file", action="store_true", help="write a new random key to --key-file if it does not exist")
    deid.add_argument("--retain-dates", action="store_true", help="shift dates by a per-patient offset instead of removing them")
    deid.add_argument("--max-shift-days", type=int, default=365)
    deid.add_argument("--retain-device", action="store_true", help="keep device identity")
    deid.add_argument("--clean-descriptors", action="store_true", help="keep descriptions with identifiers taken out")
    deid.add_argument("--allow-burned-in", action="store_true", help="pull files flagged BurnedInAnnotation=YES")
    _connection_arguments(pull)
    pull.set_defaults(handler=_pull)

    push = sub.add_parser("push", help="store DICOM files (e.g. a SEG) on a PACS; a re-push sends nothing twice",
                          description="STOW-RS (DICOMweb) or C-STORE (DIMSE); instances the PACS holds already are skipped. "
                                      + _CREDENTIALS)
    push.add_argument("dest", help="DICOMweb root (http(s)://host/dicom-web) or DIMSE peer AE@host:port")
    push.add_argument("paths", nargs="+", type=Path, help="DICOM files or folders")
    _connection_arguments(push)
    push.set_defaults(handler=_push)


def _connection_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("connection")
    group.add_argument("--auth-file", type=Path, help='JSON {"username": ..., "password": ...} or {"token": ...}')
    group.add_argument("--ca-bundle", type=Path, help="PEM file of the CA that signed the PACS certificate")
    group.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the server per request")
    group.add_argument("--calling-aet", default="SCALPEL", help="our AE title (DIMSE)")
    group.add_argument("--move-aet", default=None, help="DIMSE: AE title the PACS sends C-MOVE results to (this machine)")
    group.add_argument("--move-port", type=int, default=None, help="DIMSE: port of the in-process C-STORE receiver for C-MOVE")


def open_pacs(args: argparse.Namespace, where: str, page_size: int = 100):
    """The PACS named by ``where`` (a DICOMweb URL or AE@host:port) with the connection arguments
    (those ``args`` lacks, as in ``medical predict --push``, take their defaults)."""
    from scalpel.medical.pacs.connection import PacsAuth, PacsConnection

    auth_file, ca_bundle, timeout = getattr(args, "auth_file", None), getattr(args, "ca_bundle", None), getattr(args, "timeout", 30.0)
    auth = PacsAuth.from_file(auth_file) if auth_file else PacsAuth.from_environment()
    if "://" not in where and "@" in where:
        from scalpel.medical.pacs.dimse import DimsePacs

        return DimsePacs.from_address(where, calling_aet=getattr(args, "calling_aet", "SCALPEL"), timeout_s=timeout,
                                      move_aet=getattr(args, "move_aet", None), move_port=getattr(args, "move_port", None))
    from scalpel.medical.pacs.dicomweb import DicomWebPacs

    connection = PacsConnection(where, auth=auth, ca_bundle=str(ca_bundle) if ca_bundle else None, timeout_s=timeout)
    return DicomWebPacs(connection, page_size=page_size)


def deid_options(args: argparse.Namespace):
    """The DeidOptions of the --deid flags, or None without --deid."""
    from scalpel.medical.dicom.deid import DeidOptions, KeyFileError, read_key_file

    if not args.deid:
        return None
    if args.key_file is None:
        raise KeyFileError("--deid needs --key-file PATH (with --create-key-file the first time): the same key gives the "
                           "same pseudonyms, lets a rerun resume, and maps a SEG back to the original series on push")
    if args.key_file.resolve().is_relative_to(args.output.resolve()):
        raise KeyFileError(f"key file {args.key_file} is inside the output folder {args.output}; keep the key outside the data it protects")
    return DeidOptions(retain_longitudinal_dates=args.retain_dates, max_date_shift_days=args.max_shift_days,
                       retain_device_identity=args.retain_device, clean_descriptors=args.clean_descriptors,
                       allow_burned_in_annotation=args.allow_burned_in,
                       key=read_key_file(args.key_file, create=args.create_key_file))


def query_of(args: argparse.Namespace):
    from scalpel.medical.pacs.query import PacsQuery

    return PacsQuery(patient_id=args.patient_id, study_uid=args.study, series_uid=args.series, modality=args.modality,
                     date_from=args.date_from, date_to=args.date_to, accession=args.accession)


def _pull(args: argparse.Namespace) -> int:
    from scalpel.medical.pacs.pull import pull

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s", stream=sys.stderr)
    query = query_of(args)
    pacs = open_pacs(args, args.source, page_size=args.page_size)
    if args.list:
        found = pacs.search_series(query, max_results=args.max_results)
        print(json.dumps({"series": [s.to_dict() for s in found], "warnings": pacs.warnings}, indent=2))
        return 0
    try:
        report = pull(pacs, query, args.output, deid=deid_options(args), workers=args.workers, max_results=args.max_results)
    finally:
        getattr(pacs, "close", lambda: None)()  # the C-MOVE receiver, if one was started
    print(json.dumps(report.to_dict(), indent=2))
    return 0 if report.complete else 1


def _push(args: argparse.Namespace) -> int:
    from scalpel.medical.pacs.push import push

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s", stream=sys.stderr)
    report = push(open_pacs(args, args.dest), args.paths)
    print(json.dumps(report.to_dict(), indent=2))
    return 0

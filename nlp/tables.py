"""Labelled text from the files users already have: CSV, JSONL, Parquet or a Hugging Face
``datasets`` directory (``save_to_disk``), with configurable text/label columns.

A broken row (a CSV line with the wrong number of fields, a JSONL line that is not a JSON
object, a row whose text is empty) is either skipped and counted or refused, as the caller
chooses (``on_bad_rows="skip"|"error"``).
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scalpel.core.errors import DataError, MissingDependencyError

FORMATS = ("csv", "tsv", "jsonl", "json", "parquet", "hf")
BAD_ROW_POLICIES = ("skip", "error")


@dataclass
class TextTable:
    """Rows of one file: ``texts[i]`` with ``labels[i]`` (None when the file has no label column)."""

    texts: list[str]
    labels: list[Any] | None
    source: str
    skipped: list[str] = field(default_factory=list)
    """One reason per row that was skipped (``"line 7: 4 fields, expected 2"``)."""


def detect_format(path: Path) -> str:
    if path.is_dir():
        if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            return "hf"
        raise DataError(f"{path} is a directory but not a Hugging Face datasets folder (no dataset_info.json/state.json); "
                        "pass a .csv, .jsonl or .parquet file or a folder written by Dataset.save_to_disk")
    suffix = path.suffix.lower().lstrip(".")
    if suffix in ("csv", "tsv", "jsonl", "json", "parquet"):
        return suffix
    if suffix in ("txt", ""):
        return "txt"
    raise DataError(f"cannot tell the format of {path} from its suffix {path.suffix!r}; use .csv, .tsv, .jsonl, .parquet or a datasets folder")


def read_table(
    path: str | Path,
    text_column: str = "text",
    label_column: str | None = "label",
    *,
    on_bad_rows: str = "skip",
    require_labels: bool = True,
    split: str | None = None,
    encoding: str = "utf-8",
) -> TextTable:
    """Read ``text_column`` (and ``label_column``) of a table file.

    Args:
        require_labels: refuse a file without ``label_column``; else ``labels`` is None then.
        split: for a ``DatasetDict`` folder, which split (default: the only one, or "train").
        encoding: of a CSV, TSV, JSONL or text file; bytes that do not decode are an error
            naming the line (never replaced silently).

    Raises:
        DataError: missing file or column (the message lists the columns found), a broken
            row with ``on_bad_rows="error"``, text that is not in ``encoding``, or no usable row.
    """
    path = Path(path)
    if on_bad_rows not in BAD_ROW_POLICIES:
        raise DataError(f"on_bad_rows must be one of {BAD_ROW_POLICIES}, got {on_bad_rows!r}")
    if not path.exists():
        raise DataError(f"data file {path} does not exist; check the path")
    fmt = detect_format(path)
    if fmt in ("csv", "tsv"):
        columns, rows = _read_csv(path, "\t" if fmt == "tsv" else ",", encoding)
    elif fmt in ("jsonl", "json"):
        columns, rows = _read_jsonl(path, encoding)
    elif fmt == "parquet":
        columns, rows = _read_parquet(path)
    elif fmt == "hf":
        columns, rows = _read_hf(path, split)
    else:  # plain text: one input per line, no labels
        lines = read_text_file(path, encoding).splitlines()
        columns, rows = [text_column], [({text_column: line}, i + 1) for i, line in enumerate(lines)]

    needed = [text_column] + ([label_column] if label_column and require_labels else [])
    missing = [c for c in needed if c not in columns]
    if missing:
        raise DataError(
            f"{path} has no column {', '.join(repr(m) for m in missing)}; columns found: {columns}. "
            "Set text_column/label_column to the right names"
        )
    has_labels = bool(label_column) and label_column in columns
    texts, labels, skipped = [], [] if has_labels else None, []
    for row, line in rows:
        problem = row.get("__problem__")
        text = row.get(text_column)
        label = row.get(label_column) if has_labels else None
        if problem is None and (text is None or not str(text).strip()):
            problem = f"empty {text_column!r}"
        if problem is None and has_labels and (label is None or str(label).strip() == ""):
            problem = f"empty {label_column!r}"
        if problem is not None:
            if on_bad_rows == "error":
                raise DataError(f"{path}, row at line {line}: {problem}. Fix the row, or set on_bad_rows=skip to skip and count such rows")
            skipped.append(f"line {line}: {problem}")
            continue
        texts.append(str(text))
        if labels is not None:
            labels.append(label.strip() if isinstance(label, str) else label)
    if not texts:
        raise DataError(f"{path} has no usable rows ({len(skipped)} skipped: {skipped[:3]}); check the file and the column names")
    return TextTable(texts, labels, str(path), skipped)


def read_text_file(path: str | Path, encoding: str = "utf-8") -> str:
    """The text of ``path`` in ``encoding`` (a UTF-8 byte-order mark is dropped).

    Raises:
        DataError: bytes that are not ``encoding``, naming the line and the byte and, for
            UTF-8, suggesting the legacy encoding the file most likely uses; or an unknown encoding.
    """
    try:
        codec = codecs.lookup(encoding).name
    except LookupError as err:
        raise DataError(f"unknown text encoding {encoding!r}; use a Python codec name such as utf-8, cp1252 or latin-1") from err
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig" if codec == "utf-8" else encoding)
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        guess = next((e for e in ("cp1252", "latin-1") if e != encoding and _decodes(data, e)), None)
        hint = (f"it looks like {guess}: pass --encoding {guess}, or re-save the file as UTF-8" if guess
                else "pass the file's --encoding, or re-save it as UTF-8")
        raise DataError(f"{path}, line {line}: byte 0x{data[err.start]:02x} is not {encoding} text; {hint}") from err


def _decodes(data: bytes, encoding: str) -> bool:
    try:
        data.decode(encoding)
    except UnicodeDecodeError:
        return False
    return True


def _read_csv(path: Path, delimiter: str, encoding: str = "utf-8") -> tuple[list[str], list[tuple[dict, int]]]:
    rows = []
    with io.StringIO(read_text_file(path, encoding), newline="") as f:
        reader = csv.reader(f, delimiter=delimiter)
        header = next(reader, None)
        if not header:
            raise DataError(f"{path} is empty; a CSV needs a header row naming its columns")
        header = [h.strip() for h in header]
        while True:
            try:
                values = next(reader)
            except StopIteration:
                break
            except csv.Error as err:
                rows.append(({"__problem__": f"unreadable CSV ({err})"}, reader.line_num))
                continue
            if not values:
                continue
            if len(values) != len(header):
                rows.append(({"__problem__": f"{len(values)} fields, expected {len(header)}"}, reader.line_num))
            else:
                rows.append((dict(zip(header, values)), reader.line_num))
    return header, rows


def _read_jsonl(path: Path, encoding: str = "utf-8") -> tuple[list[str], list[tuple[dict, int]]]:
    text = read_text_file(path, encoding)
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"{path} is not valid JSON ({err})") from err
        lines = [(r, i + 1) for i, r in enumerate(records)]
    else:
        lines = []
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                lines.append((json.loads(line), i))
            except json.JSONDecodeError as err:
                lines.append(({"__problem__": f"not JSON ({err.msg})"}, i))
    columns: list[str] = []
    rows = []
    for record, i in lines:
        if not isinstance(record, dict):
            rows.append(({"__problem__": f"a JSON {type(record).__name__}, not an object"}, i))
            continue
        columns += [k for k in record if k not in columns and k != "__problem__"]
        rows.append((record, i))
    return columns, rows


def _read_parquet(path: Path) -> tuple[list[str], list[tuple[dict, int]]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as err:
        raise MissingDependencyError("pyarrow", "reading Parquet files") from err
    table = pq.read_table(path)
    records = table.to_pylist()
    return list(table.column_names), [(r, i + 1) for i, r in enumerate(records)]


def _read_hf(path: Path, split: str | None) -> tuple[list[str], list[tuple[dict, int]]]:
    try:
        import datasets
    except ImportError as err:
        raise MissingDependencyError("datasets", "reading Hugging Face datasets folders") from err
    data = datasets.load_from_disk(str(path))
    if isinstance(data, datasets.DatasetDict):
        names = list(data)
        chosen = split or ("train" if "train" in names else names[0] if len(names) == 1 else None)
        if chosen not in names:
            raise DataError(f"{path} holds splits {names}; say which one to read (split=...)")
        data = data[chosen]
    return list(data.column_names), [(r, i + 1) for i, r in enumerate(data)]

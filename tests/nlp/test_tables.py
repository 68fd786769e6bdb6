"""Reading labelled text: formats, columns, broken rows."""

from __future__ import annotations

import json

import pytest

from scalpel.core.errors import DataError
from scalpel.nlp.tables import read_table


def test_csv_broken_row_is_skipped_and_counted(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('text,label\n"good movie",positive\nbad,row,with,extra\n"awful",negative\n"",positive\n')
    table = read_table(path)
    assert table.texts == ["good movie", "awful"]
    assert table.labels == ["positive", "negative"]
    assert len(table.skipped) == 2
    assert "4 fields, expected 2" in table.skipped[0] and "empty 'text'" in table.skipped[1]


def test_csv_broken_row_refused_when_asked(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label\nok,1\nbroken,1,2\n")
    with pytest.raises(DataError, match=r"line 3: 3 fields, expected 2.*on_bad_rows=skip"):
        read_table(path, on_bad_rows="error")


def test_missing_column_lists_the_columns_found(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("review,stars\nnice,5\n")
    with pytest.raises(DataError, match=r"no column 'text', 'label'; columns found: \['review', 'stars'\]"):
        read_table(path)
    table = read_table(path, text_column="review", label_column="stars")
    assert table.texts == ["nice"] and table.labels == ["5"]


def test_jsonl_parquet_and_datasets_folder_agree(tmp_path):
    rows = [{"sentence": "fine", "y": 1}, {"sentence": "poor", "y": 0}]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\nnot json\n")
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "hf"))
    for name in ("d.jsonl", "d.parquet", "hf"):
        table = read_table(tmp_path / name, "sentence", "y")
        assert table.texts == ["fine", "poor"] and table.labels == [1, 0], name
    assert len(read_table(tmp_path / "d.jsonl", "sentence", "y").skipped) == 1


def test_unknown_suffix_and_missing_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_table(tmp_path / "nope.csv")
    (tmp_path / "d.xlsx").write_text("x")
    with pytest.raises(DataError, match="cannot tell the format"):
        read_table(tmp_path / "d.xlsx")


def test_latin1_files_are_named_with_the_line_and_read_with_encoding(tmp_path):
    from scalpel.core.errors import DataError
    from scalpel.nlp.chat.data import read_conversations
    from scalpel.nlp.tables import read_table

    csv_file = tmp_path / "reviews.csv"
    csv_file.write_bytes("text,label\ngood film,pos\ncaf\u00e9 scene was d\u00e9j\u00e0 vu,neg\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"reviews.csv, line 3: byte 0xe9 is not utf-8 text.*--encoding cp1252"):
        read_table(csv_file)
    table = read_table(csv_file, encoding="latin-1")
    assert table.texts[1] == "caf\u00e9 scene was d\u00e9j\u00e0 vu" and not table.skipped

    jsonl = tmp_path / "chat.jsonl"
    jsonl.write_bytes(('{"prompt": "hi", "response": "ok"}\n{"prompt": "na\u00efve?", "response": "s\u00ed"}\n').encode("latin-1"))
    with pytest.raises(DataError, match=r"chat.jsonl, line 2: byte 0xef"):
        read_table(jsonl, "prompt", "response")
    with pytest.raises(DataError, match=r"chat.jsonl, line 2"):
        read_conversations(jsonl)
    assert read_conversations(jsonl, encoding="latin-1")[1][0]["content"] == "na\u00efve?"
    with pytest.raises(DataError, match="unknown text encoding 'klingon'"):
        read_table(csv_file, encoding="klingon")


def test_utf8_with_a_byte_order_mark_reads_as_utf8(tmp_path):
    from scalpel.nlp.tables import read_table

    f = tmp_path / "bom.csv"
    f.write_bytes("\ufefftext,label\nd\u00e9j\u00e0,pos\n".encode("utf-8"))
    assert read_table(f).texts == ["d\u00e9j\u00e0"]

"""The NLP page under Streamlit's AppTest: no runs, sentiment on text and CSV, adapter
switching on one cached base, bad CSV uploads, and a streamed chat reply."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from scalpel.apps.nlp_page import read_csv_texts
from scalpel.core.errors import DataError

APPS = Path(__file__).resolve().parents[2] / "apps"

PAGE = str(APPS / "nlp_page.py")


def _app(root, mode="Sentiment"):
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.session_state["runs_dir"] = str(root)
    at.session_state["nlp_mode"] = mode
    return at.run()


def test_no_runs_says_how_to_make_one(tmp_path):
    at = _app(tmp_path / "nothing")
    assert not at.exception
    assert any("make demo" in i.value for i in at.info)


def test_sentiment_on_typed_text_and_adapter_switch(nlp_runs):
    at = _app(nlp_runs)
    assert not at.exception
    assert at.sidebar.selectbox(key="run_sentiment").options == ["sent-b/adapter", "sent-a/adapter"]
    at.text_area(key="sentiment_text").input("a wonderful film\na dull plot").run()
    at.button(key="sentiment_go").click().run()
    assert not at.exception and not at.error
    table = at.dataframe[-1].value
    assert list(table["text"]) == ["a wonderful film", "a dull plot"]
    assert ((table["p(negative)"] + table["p(positive)"]) - 1).abs().max() < 1e-3
    first = table["p(positive)"].tolist()
    at.sidebar.selectbox(key="run_sentiment").select("sent-a/adapter").run()
    at.button(key="sentiment_go").click().run()
    assert not at.exception
    assert at.dataframe[-1].value["p(positive)"].tolist() != first  # another adapter, another answer


def test_sentiment_bad_upload_is_a_friendly_error(nlp_runs):
    with pytest.raises(DataError, match="no column 'text'.*'review'"):
        read_csv_texts(b"review,label\ngood,1\n", "text")
    with pytest.raises(DataError, match="not UTF-8|binary"):
        read_csv_texts(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", "text")
    assert read_csv_texts(b"text,label\ngood,1\n ,0\nbad,0\n", "text") == ["good", "bad"]


def test_chat_streams_a_reply_into_the_history(nlp_runs):
    at = _app(nlp_runs, "Chat")
    assert not at.exception
    at.sidebar.slider(key="chat_max_new").set_value(5)
    at.sidebar.slider(key="chat_temperature").set_value(0.0)
    at.chat_input(key="chat_input").set_value("hello").run()
    assert not at.exception and not at.error
    history = at.session_state["chat_history"]
    assert [m["role"] for m in history] == ["user", "assistant"] and history[0]["content"] == "hello"
    assert len(at.chat_message) == 2


def test_sentiment_csv_upload_and_bad_uploads_in_the_page(nlp_runs):
    at = _app(nlp_runs)
    at.file_uploader(key="sentiment_csv").set_value(("reviews.csv", b"text,label\ngreat fun,1\nboring,0\n", "text/csv")).run()
    at.button(key="sentiment_go").click().run()
    assert not at.exception and not at.error
    assert list(at.dataframe[-1].value["text"]) == ["great fun", "boring"]
    assert at.get("download_button")  # the results are downloadable
    for name, content, expect in (("r.csv", b"review,label\ngood,1\n", "no column 'text'"),
                                  ("x.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", "not")):
        at.file_uploader(key="sentiment_csv").set_value((name, content, "application/octet-stream")).run()
        at.button(key="sentiment_go").click().run()
        assert not at.exception
        assert at.error and expect in at.error[0].value


def test_adapter_whose_base_is_gone_is_a_friendly_error(tmp_path, tiny_bert_dir):
    import shutil

    import importlib.util

    spec = importlib.util.spec_from_file_location("apps_conftest", Path(__file__).with_name("conftest.py"))
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)

    base = tmp_path / "bert"
    shutil.copytree(tiny_bert_dir, base)
    helpers.make_sentiment_run(tmp_path / "runs" / "orphan" / "adapter", base, 5)
    shutil.rmtree(base)
    at = _app(tmp_path / "runs")
    at.text_area(key="sentiment_text").input("fine").run()
    at.button(key="sentiment_go").click().run()
    assert not at.exception
    assert at.error and "Cannot classify" in at.error[0].value and str(base) in at.error[0].value

"""NLP page: sentiment (typed text or an uploaded CSV) and chat (streamed replies).

Run alone with ``scalpel app nlp``; part of the multipage app (``scalpel app``).
The base model is loaded once per base (``st.cache_resource``) and every adapter chosen
in the sidebar is loaded onto it once and switched with :class:`AdapterSlots`.
"""

from __future__ import annotations

import csv
import io
from typing import Any

import streamlit as st
import torch

from scalpel.apps.common import MAX_UPLOAD_MB, cached, friendly_errors, pick_run, too_large
from scalpel.apps.runs import AdapterSlots, RunInfo
from scalpel.core.errors import DataError

MAX_CSV_ROWS = 5000


@cached
def sentiment_base(base_path: str, label_names: tuple[str, ...], tokenizer_path: str, pooling: str = "auto") -> tuple[AdapterSlots, Any]:
    """The classifier base and its tokenizer, once per (base, labels, pooling)."""
    from scalpel.nlp.sentiment.model import load_classifier, load_tokenizer

    return AdapterSlots(load_classifier(base_path, label_names, pooling=pooling)), load_tokenizer(tokenizer_path)


def sentiment_model(run: RunInfo) -> tuple[torch.nn.Module, Any]:
    """Base (cached) + this run's adapter (loaded once, then switched)."""
    import os

    from scalpel.core.artifacts import read_adapter_meta
    from scalpel.nlp.sentiment.model import default_model_path

    meta = read_adapter_meta(run.adapter_dir)
    base, extra = meta.get("base_model", {}), meta.get("extra", {})
    path = base.get("name_or_path", "")
    if base.get("embedded") and not os.path.isdir(path):
        path = default_model_path()
    if not path or "label_names" not in extra:
        raise DataError(f"{run.adapter_dir} does not record its base model and labels; retrain it with scalpel run nlp.sentiment")
    slots, tokenizer = sentiment_base(path, tuple(extra["label_names"]), extra.get("tokenizer") or path, extra.get("pooling", "auto"))
    return slots.activate(run.adapter_dir), tokenizer


def classify(model: torch.nn.Module, tokenizer: Any, texts: list[str], extra: dict[str, Any], batch_size: int = 64) -> list[dict[str, Any]]:
    """One row per text: text, label, score and one ``p(<label>)`` column per label."""
    from scalpel.nlp.sentiment.predict import class_probabilities

    names = list(extra["label_names"])
    if not texts or any(not t.strip() for t in texts):
        raise DataError("give one or more non-empty texts")
    rows = []
    # as `scalpel predict`: length-sorted batches, the precision fit trains with (auto)
    for text, p in zip(texts, class_probabilities(model, tokenizer, texts, int(extra.get("max_length", 128)), batch_size=batch_size)):
        k = int(torch.argmax(p))
        rows.append({"text": text, "label": names[k], "score": round(float(p[k]), 4),
                     **{f"p({n})": round(float(v), 4) for n, v in zip(names, p)}})
    return rows


def read_csv_texts(data: bytes, column: str) -> list[str]:
    """The non-empty cells of ``column`` in a CSV held in memory.

    Raises:
        DataError: not UTF-8 text, not a CSV with a header, no such column (the columns
            found are listed), no texts, or more than :data:`MAX_CSV_ROWS` rows.
    """
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError("the file is not UTF-8 text; upload a CSV file (save it as 'CSV UTF-8')") from err
    if "\x00" in text:
        raise DataError("the file is binary, not a CSV; upload a CSV with a header row")
    reader = csv.DictReader(io.StringIO(text))
    try:
        columns = reader.fieldnames or []
        rows = list(reader)
    except csv.Error as err:
        raise DataError(f"the file is not a readable CSV ({err}); upload a CSV with a header row") from err
    if column not in columns:
        found = ", ".join(repr(c) for c in columns) or "none"
        raise DataError(f"the CSV has no column {column!r} (columns found: {found}); rename the text column or type its name")
    texts = [str(r.get(column) or "").strip() for r in rows]
    texts = [t for t in texts if t]
    if not texts:
        raise DataError(f"column {column!r} holds no text")
    if len(texts) > MAX_CSV_ROWS:
        raise DataError(f"the CSV has {len(texts)} texts; the app classifies at most {MAX_CSV_ROWS} (use scalpel predict for more)")
    return texts


def to_csv(rows: list[dict[str, Any]]) -> bytes:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode("utf-8")


def sentiment_page() -> None:
    st.header("Sentiment")
    run = pick_run(("nlp.sentiment",), "nlp.sentiment", key="run_sentiment")
    if run is None:
        return
    st.button("Try held-out review snippets", key="sentiment_try", on_click=_fill_examples, args=(run,),
              help="Snippets of the run's own test split (never trained on), with their labels in the corpus")
    text = st.text_area("Text (one per line)", key="sentiment_text")
    upload = st.file_uploader("...or a CSV file", type=None, key="sentiment_csv",
                              help=f"A CSV with a header row; at most {MAX_UPLOAD_MB} MB")
    column = st.text_input("Text column", value=run.extra.get("text_column", "text"), key="sentiment_column")
    others = compare_choices(run)
    compare_with = st.multiselect("Compare with other adapters of this base (one mixed-adapter pass)", list(others),
                                  key="sentiment_compare") if others else []
    clicked = st.button("Classify", key="sentiment_go")
    if not (clicked or st.session_state.pop("sentiment_auto", False)):
        return
    with friendly_errors("Cannot classify"):
        texts = [t for t in text.splitlines() if t.strip()]
        if upload is not None:
            if too_large([upload]):
                return
            texts += read_csv_texts(upload.getvalue(), column)
        if not texts:
            st.warning("Type a text or upload a CSV first.")
            return
        truth = st.session_state.get("sentiment_truth", {})
        if compare_with:
            rows = compare_rows([run, *(others[n] for n in compare_with)], texts, truth)
        else:
            with st.spinner("Loading the model..."):
                model, tokenizer = sentiment_model(run)
            rows = [{**r, **({"true label": truth[r["text"]]} if r["text"] in truth else {})}
                    for r in classify(model, tokenizer, texts, run.extra)]
        st.dataframe(rows, hide_index=True, key="sentiment_results")
        st.download_button("Download results (CSV)", to_csv(rows), file_name="sentiment.csv", mime="text/csv")


def _fill_examples(run: RunInfo) -> None:
    """The one-click examples: fill the text box with held-out snippets and classify them."""
    from scalpel.apps.examples import sentiment_examples

    with friendly_errors("Cannot load the examples"):
        examples = sentiment_examples(run)
        st.session_state["sentiment_text"] = "\n".join(t for t, _ in examples)
        st.session_state["sentiment_truth"] = dict(examples)
        st.session_state["sentiment_auto"] = True


def compare_choices(run: RunInfo) -> dict[str, RunInfo]:
    """The other sentiment runs on the same base and labels as ``run``, by name."""
    from scalpel.apps.runs import find_runs

    runs, _ = find_runs(st.session_state.get("runs_dir") or ".", ("nlp.sentiment",))
    same = lambda r: r.base_model == run.base_model and r.extra.get("label_names") == run.extra.get("label_names")  # noqa: E731
    return {r.name: r for r in runs if r.name != run.name and same(r)}


def compare_rows(runs: list[RunInfo], texts: list[str], truth: dict[str, str]) -> list[dict[str, Any]]:
    """One row per text: the label and score of every adapter, from one mixed-adapter pass
    (:func:`scalpel.nlp.sentiment.compare.compare`; adapters that cannot share a batch run one by one)."""
    from scalpel.nlp.sentiment.compare import compare

    with st.spinner(f"Comparing {len(runs)} adapters..."):
        per_adapter = compare([r.adapter_dir for r in runs], texts, {})
    methods = [r.method for r in runs]
    heads = [m if methods.count(m) == 1 else r.name for m, r in zip(methods, runs)]
    rows = []
    for i, text in enumerate(texts):
        row: dict[str, Any] = {"text": text, **({"true label": truth[text]} if text in truth else {})}
        for head, results in zip(heads, per_adapter):
            row[f"{head}: label"] = results[i]["label"]
            row[f"{head}: score"] = round(results[i]["score"], 4)
        rows.append(row)
    return rows


@cached
def chat_base(base_path: str, tokenizer_dir: str, template: str) -> tuple[AdapterSlots, Any]:
    from scalpel.nlp.chat.pipeline import load_causal_lm, load_chat_tokenizer

    tokenizer = load_chat_tokenizer(tokenizer_dir, template)
    return AdapterSlots(load_causal_lm(base_path, tokenizer)), tokenizer


def chat_model(run: RunInfo) -> tuple[torch.nn.Module, Any]:
    from scalpel.core.artifacts import read_adapter_meta

    meta = read_adapter_meta(run.adapter_dir)
    base = meta.get("base_model", {}).get("name_or_path", "")
    if not base:
        raise DataError(f"{run.adapter_dir} does not record its base model; retrain it with scalpel run nlp.chat")
    # The tokenizer (with its chat template) is saved beside each chat adapter; adapters of one
    # base share it, so the first adapter's copy serves the cached base.
    slots, tokenizer = chat_base(base, str(run.adapter_dir), meta.get("extra", {}).get("chat_template", ""))
    return slots.activate(run.adapter_dir), tokenizer


def chat_page() -> None:
    st.header("Chat")
    run = pick_run(("nlp.chat",), "nlp.chat", key="run_chat")
    if run is None:
        return
    with st.sidebar:
        st.subheader("Sampling")
        temperature = st.slider("Temperature (0 = greedy)", 0.0, 2.0, 0.7, 0.05, key="chat_temperature")
        top_p = st.slider("Top-p", 0.05, 1.0, 0.9, 0.05, key="chat_top_p")
        top_k = st.slider("Top-k", 1, 200, 50, key="chat_top_k")
        max_new = st.slider("Max new tokens", 1, 512, 64, key="chat_max_new")
        system = st.text_input("System prompt", value="", key="chat_system")
        if st.button("Clear chat", key="chat_clear"):
            st.session_state["chat_history"] = []
    history: list[dict[str, str]] = st.session_state.setdefault("chat_history", [])
    for message in history:
        with st.chat_message(message["role"]):
            st.markdown(message["content"])
    examples = chat_examples_for(run)
    columns = st.columns(len(examples))
    for k, (column, example) in enumerate(zip(columns, examples)):
        label = example.strip().splitlines()[-1][:60]  # the part that differs (a shared instruction comes first)
        if column.button(label, key=f"chat_example_{k}", help=f"One-click example prompt:\n\n{example}"):
            st.session_state["chat_pending"] = example
    prompt = st.chat_input("Say something", key="chat_input") or st.session_state.pop("chat_pending", None)
    if not prompt:
        return
    with st.chat_message("user"):
        st.markdown(prompt)
    with friendly_errors("Cannot reply"):
        from scalpel.nlp.chat.generate import stream_reply

        model, tokenizer = chat_model(run)
        messages = ([{"role": "system", "content": system}] if system else []) + history + [{"role": "user", "content": prompt}]
        with st.chat_message("assistant"):
            answer = st.write_stream(stream_reply(model, tokenizer, messages, max_new_tokens=max_new, temperature=temperature,
                                                  top_p=top_p, top_k=top_k))
        history += [{"role": "user", "content": prompt}, {"role": "assistant", "content": str(answer or "").strip()}]


def chat_examples_for(run: RunInfo) -> list[str]:
    from scalpel.apps.examples import chat_examples

    return chat_examples(run)


def main() -> None:
    mode = st.sidebar.radio("NLP task", ["Sentiment", "Chat"], key="nlp_mode")
    if mode == "Sentiment":
        sentiment_page()
    else:
        chat_page()


if __name__ == "__main__":
    st.set_page_config(page_title="Scalpel: NLP", layout="wide")
    main()

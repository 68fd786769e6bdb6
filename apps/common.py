"""Streamlit pieces every page shares: the runs-directory input, the run picker with the
adapter's metadata, the "no runs yet" message, and friendly errors for bad input."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import streamlit as st

from scalpel.apps.runs import HOW_TO_MAKE_ONE, RunInfo, best_run_index, default_runs_dir, find_runs
from scalpel.core.errors import ScalpelError

#: Largest upload a page accepts, in MB (also the Streamlit server limit set by ``scalpel app``).
MAX_UPLOAD_MB = 200


def runs_dir_input() -> str:
    """The runs directory, from the sidebar (default ``$SCALPEL_RUNS`` or ``runs``)."""
    return st.sidebar.text_input("Runs directory", value=default_runs_dir(), key="runs_dir",
                                 help="Folder searched for trained adapters (scalpel.json). Env: SCALPEL_RUNS")


def pick_run(tasks: tuple[str, ...], pipeline: str, label: str = "Run", key: str | None = None) -> RunInfo | None:
    """A select box over the runs of ``tasks`` with the chosen adapter's metadata; None (and
    an explanation of how to make a run) when there is none."""
    root = runs_dir_input()
    runs, problems = find_runs(root, tasks)
    for problem in problems:
        st.sidebar.warning(problem)
    if not runs:
        st.info(HOW_TO_MAKE_ONE.format(root=root, pipeline=pipeline))
        return None
    names = [r.name for r in runs]
    chosen = st.sidebar.selectbox(label, names, index=best_run_index(runs), key=key or f"run_{pipeline}",
                                  help="Preselected: the best run by its held-out metric (full fine-tuning only when alone)")
    run = runs[names.index(chosen)]
    st.caption(run.provenance())
    with st.expander(f"Adapter: {run.name}", expanded=False):
        st.dataframe([run.summary()], hide_index=True)
        if run.metrics:
            st.json(run.metrics, expanded=False)
    return run


@contextmanager
def friendly_errors(what: str) -> Iterator[None]:
    """Show a :class:`ScalpelError` (or a decoding error from bad input) as ``st.error``, not a traceback."""
    try:
        yield
    except ScalpelError as err:
        st.error(f"{what}: {err}")
    except (ValueError, OSError, KeyError, UnicodeDecodeError) as err:
        st.error(f"{what}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")


def too_large(uploads: list[Any], limit_mb: float = MAX_UPLOAD_MB) -> bool:
    """True (and an error shown) when the uploads together exceed ``limit_mb``."""
    total = sum(getattr(u, "size", 0) or len(u.getvalue()) for u in uploads)
    if total > limit_mb * 1024 * 1024:
        st.error(f"The upload is {total / 2**20:.1f} MB; the limit is {limit_mb:g} MB. Upload fewer files.")
        return True
    return False


def cached(func: Callable) -> Callable:
    """``st.cache_resource`` without the spinner text of the function name."""
    return st.cache_resource(show_spinner=False, max_entries=4)(func)

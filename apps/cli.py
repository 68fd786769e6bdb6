"""``scalpel app [nlp|vision|medical]``: start the Streamlit app (all pages, or one).

Runs ``python -m streamlit run <page file> --server.headless true`` with the upload limit
of :data:`scalpel.apps.common.MAX_UPLOAD_MB`; ``--runs DIR`` sets ``SCALPEL_RUNS``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from scalpel.core.errors import ScalpelError

HERE = Path(__file__).resolve().parent
PAGES = {"all": "main.py", "nlp": "nlp_page.py", "vision": "vision_page.py", "medical": "medical_page.py"}


def register(commands: argparse._SubParsersAction) -> None:
    app = commands.add_parser("app", help="start the Streamlit inference app", description=__doc__.splitlines()[0])
    app.add_argument("page", nargs="?", default="all", choices=sorted(PAGES), help="one page, or all (default)")
    app.add_argument("--runs", type=Path, help="runs directory to list adapters from (default: $SCALPEL_RUNS or runs/)")
    app.add_argument("--port", type=int, default=8501)
    app.add_argument("--address", default="127.0.0.1", help="interface to listen on (default: loopback only)")
    app.set_defaults(handler=_app)


def command(page: str, port: int = 8501, address: str = "127.0.0.1") -> list[str]:
    """The streamlit command line for ``page``."""
    from scalpel.apps.common import MAX_UPLOAD_MB

    if page not in PAGES:
        raise ScalpelError(f"unknown app page {page!r}; choose one of: {', '.join(sorted(PAGES))}")
    return [sys.executable, "-m", "streamlit", "run", str(HERE / PAGES[page]), "--server.headless", "true",
            "--server.port", str(port), "--server.address", address, "--server.maxUploadSize", str(MAX_UPLOAD_MB),
            "--browser.gatherUsageStats", "false"]


def _app(args: argparse.Namespace) -> int:
    env = dict(os.environ)
    if args.runs is not None:
        if not args.runs.is_dir():
            raise ScalpelError(f"runs directory {args.runs} does not exist; run `make demo` first or pass --runs DIR")
        env["SCALPEL_RUNS"] = str(args.runs.resolve())
    cmd = command(args.page, args.port, args.address)
    print(f"scalpel: starting {' '.join(cmd[2:5])} on http://{args.address}:{args.port}", file=sys.stderr)
    return subprocess.call(cmd, env=env)

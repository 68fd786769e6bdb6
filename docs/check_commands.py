"""Run the shell commands of the documentation, so none goes stale (``make docs-check``).

Every fenced block with the info string ``bash`` in ``README.md`` and ``docs/**/*.md`` is
run, unless the line before it (blank lines aside) is

    <!-- docs-check: skip (why: GPU, hub download, multi-node, hours...) -->

Each markdown file gets its own scratch copy of the repository (the files git tracks or
would track, without ``.venv`` and ``runs/``), and its blocks run there in order, so a
block may use what an earlier block of the same page wrote (train, then predict) and
nothing is written into the checkout (the code that runs is the installed Scalpel, with
``pip install -e .`` the checkout's own). A block runs as one ``bash -e -o pipefail`` script
from the copy's root, with the virtual environment's ``bin`` first on ``PATH``,
``OMP_NUM_THREADS=1`` and the Hugging Face hubs switched offline. A failure prints the
file and line of the command that failed and the block's output; the exit status is 1
if any block failed.

    python docs/check_commands.py --list          # what would run, what is skipped and why
    python docs/check_commands.py                 # run them all
    python docs/check_commands.py docs/nlp.md     # one page
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIP = re.compile(r"^\s*<!--\s*docs-check:\s*skip\b\s*(?:\((?P<reason>.*)\))?\s*-->\s*$")
FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`\s]*)")
#: Never copied into a scratch checkout (large, or outputs).
EXCLUDED = (".venv", "runs", ".git")


@dataclass(frozen=True)
class Block:
    """One ``bash`` block of a markdown file."""

    path: Path
    line: int
    """1-based line of the block's first command line (the line after the opening fence)."""
    text: str
    skip: str | None = None
    """Why the block is not run (the marker's reason), or None when it runs."""

    @property
    def where(self) -> str:
        return f"{_relative(self.path)}:{self.line}"


def markdown_files(root: Path = ROOT) -> list[Path]:
    """README.md and every docs/**/*.md, in a stable order."""
    files = [root / "README.md"] if (root / "README.md").exists() else []
    return files + sorted(p for p in (root / "docs").rglob("*.md") if not any(part in EXCLUDED for part in p.parts))


def extract_blocks(path: Path, text: str | None = None) -> list[Block]:
    """The ``bash`` blocks of one markdown file, with their line numbers and skip reasons."""
    lines = (path.read_text(encoding="utf-8") if text is None else text).splitlines()
    blocks, i = [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        fence = opening.group("fence")
        end = i + 1
        while end < len(lines) and not re.match(rf"^ {{0,3}}{fence[0]}{{{len(fence)},}}\s*$", lines[end]):
            end += 1
        if opening.group("info").lower() == "bash":
            blocks.append(Block(path, i + 2, "\n".join(lines[i + 1 : end]), _skip_reason(lines, i)))
        i = end + 1
    return blocks


def _skip_reason(lines: list[str], fence_index: int) -> str | None:
    j = fence_index - 1
    while j >= 0 and not lines[j].strip():
        j -= 1
    if j >= 0 and (m := SKIP.match(lines[j])):
        return (m.group("reason") or "").strip() or "no reason given"
    return None


def all_blocks(paths: list[Path] | None = None) -> list[Block]:
    return [b for p in (paths or markdown_files()) for b in extract_blocks(p)]


def commands(block: Block) -> list[tuple[int, str]]:
    """The block's logical command lines ``(file line, text)``: continuations and quoted
    newlines joined, comment lines dropped."""
    out, pending, start, heredoc = [], "", 0, None
    for offset, raw in enumerate(block.text.splitlines()):
        line = raw.rstrip()
        if heredoc is not None:  # the body of `cmd <<'EOF'` is the command's input, not commands
            if line.strip() == heredoc:
                heredoc = None
            continue
        if not pending:
            start = block.line + offset
            if not line.strip() or line.lstrip().startswith("#"):
                continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        pending += line
        if _open_quote(pending):
            pending += "\n"
            continue
        out.append((start, pending.strip()))
        if m := re.search(r"<<-?\s*(['\"]?)([A-Za-z_]+)\1", pending):
            heredoc = m.group(2)
        pending = ""
    if pending.strip():
        out.append((start, pending.strip()))
    return out


def _open_quote(text: str) -> bool:
    try:
        shlex.split(text, comments=True)
    except ValueError:
        return True
    return False


# -- static check (cheap, runs in the test suite) --------------------------------------------

_OPERATORS = {"&&", "||", ";", "|", "&", "(", ")", ";;"}
_WRAPPERS = {"nice", "time", "env", "exec", "nohup"}


def segments(command: str) -> list[list[str]]:
    """Simple commands of one shell line: split at ``&&``, ``|``, ``;`` outside quotes; leading
    ``VAR=value`` assignments and wrappers (``nice -n 10``, ``time``) dropped."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    out, current, redirect = [], [], False
    for token in lexer:
        if redirect:  # the file (or heredoc marker) of `> FILE`, `2>&1`, `<<EOF`
            redirect = False
        elif re.fullmatch(r"[<>&]*[<>][<>&]*", token):
            redirect = True
            if current and current[-1].isdigit():  # the 2 of 2>
                current.pop()
        elif token in _OPERATORS:
            out.append(current)
            current = []
        else:
            current.append(token)
    out.append(current)
    cleaned = []
    for argv in out:
        while argv and (re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", argv[0]) or argv[0] in _WRAPPERS):
            argv = argv[3:] if argv[0] == "nice" and argv[1:2] == ["-n"] else argv[1:]
        if argv:
            cleaned.append(argv)
    return cleaned


def static_problems(blocks: list[Block], root: Path = ROOT) -> list[str]:
    """Commands that name something that does not exist: a ``scalpel`` subcommand, pipeline or
    flag (checked by the real argument parser), a ``make`` target, a repository script run
    with ``python``, or a ``python -m`` module. Skipped blocks are checked too: a command
    that cannot run here must still be spelled right."""
    targets = set(re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", (root / "Makefile").read_text(), re.M))
    problems = []
    for block in blocks:
        for line, command in commands(block):
            try:
                parsed = segments(command)
            except ValueError as err:  # unbalanced quotes
                problems.append(f"{_relative(block.path)}:{line}: cannot parse ({err}): {command}")
                continue
            for argv in parsed:
                problem = _argv_problem(argv, targets, root)
                if problem:
                    problems.append(f"{_relative(block.path)}:{line}: {problem}: {' '.join(argv)[:160]}")
    return problems


def _argv_problem(argv: list[str], make_targets: set[str], root: Path) -> str | None:
    program = Path(argv[0]).name
    if program == "scalpel":
        return _scalpel_problem(argv[1:])
    if "-m" in argv[:-1] and argv[argv.index("-m") + 1] == "scalpel.core.cli":  # python/torchrun/accelerate launch
        return _scalpel_problem(argv[argv.index("-m") + 2 :])
    if program == "make":
        missing = [a for a in argv[1:] if not a.startswith("-") and "=" not in a and a not in make_targets]
        return f"no make target {', '.join(missing)}" if missing else None
    if program in ("python", "python3") and len(argv) > 1:
        if argv[1] == "-m" and len(argv) > 2:
            return None if _module_exists(argv[2]) else f"no module {argv[2]}"
        script = argv[1]
        # a repository script (benchmarks/x.py, docs/y.py) must exist; a user's own train.py is theirs
        if script.endswith(".py") and "/" in script and not script.startswith(("/", "~", "$")):
            return None if (root / script).is_file() else f"no script {script}"
    return None


def _module_exists(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def _scalpel_problem(args: list[str]) -> str | None:
    """Parse ``scalpel ARGS`` with the real parser (nothing runs); the error argparse would print."""
    import contextlib
    import io

    from scalpel.core.cli import build_parser

    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            parsed, extras = build_parser(args).parse_known_args(args)
    except SystemExit as exit_:
        if exit_.code in (0, None):  # --help
            return None
        return stderr.getvalue().strip().splitlines()[-1] if stderr.getvalue().strip() else "scalpel rejects these arguments"
    except Exception as err:  # an unknown pipeline named after `run` raises before argparse speaks
        return f"{type(err).__name__}: {err}"
    if getattr(parsed, "command", None) in ("run", "predict"):
        from scalpel.core.pipeline import available_pipelines

        if parsed.pipeline not in available_pipelines() and parsed.pipeline not in (None, "-h", "--help"):
            return f"no pipeline {parsed.pipeline!r} (installed: {', '.join(sorted(available_pipelines()))})"
    if getattr(parsed, "command", None) == "run" and parsed.pipeline in available_pipelines():
        return _run_flags_problem(parsed.pipeline, parsed.rest)
    flags = [e for e in extras if e.startswith("-")]
    if flags or (extras and getattr(parsed, "command", None) != "predict"):
        return f"unrecognized arguments: {' '.join(extras)}"
    return None


def _run_flags_problem(name: str, rest: list[str]) -> str | None:
    """Parse a pipeline's flags with the real parser (a ``-c`` file is left out: a block may write it first)."""
    import contextlib
    import io
    import warnings

    from scalpel.core.errors import ScalpelError
    from scalpel.core.flags import parse_run_flags
    from scalpel.core.pipeline import get_pipeline

    rest = list(rest)
    for flag in ("-c", "--config"):
        if flag in rest:
            i = rest.index(flag)
            del rest[i:i + 2]
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()), \
                warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", FutureWarning)
            parse_run_flags(get_pipeline(name), rest)
        if caught:  # the docs show today's spelling, not one kept for old scripts
            return f"scalpel run {name}: {caught[0].message}"
    except SystemExit as exit_:
        if exit_.code in (0, None):
            return None
        text = " ".join(stderr.getvalue().split())
        return f"scalpel run {name}: {text[-300:] or 'flags rejected'}"
    except ScalpelError as err:
        return f"scalpel run {name}: {err}"
    return None


# -- running -----------------------------------------------------------------------------

def scratch_copy(destination: Path, root: Path = ROOT) -> Path:
    """Copy the files git tracks or would track (untracked, not ignored) into ``destination``."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root, capture_output=True, check=True,
    ).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = root / name
        if name.split("/")[0] in EXCLUDED or not source.is_file():
            continue  # deleted in the working tree, or a folder (submodule)
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    return destination


def environment(venv: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(venv)
    env.pop("PYTHONHOME", None)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", MPLBACKEND="Agg", PYTHONDONTWRITEBYTECODE="1")
    return env


@dataclass
class Outcome:
    block: Block
    ok: bool
    seconds: float
    output: str
    failed_line: int | None = None


def run_block(block: Block, cwd: Path, env: dict[str, str], timeout: float) -> Outcome:
    # The ERR trap reports the script line that failed; line 3 of the script is the block's first.
    script = f'set -eo pipefail\ntrap \'echo "docs-check: exit $? at line $LINENO" >&2\' ERR\n{block.text}\n'
    started = time.perf_counter()
    process = subprocess.Popen(
        ["bash", "-c", script], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the block's whole process group, nothing else
        output, _ = process.communicate()
        return Outcome(block, False, time.perf_counter() - started, output + f"\ndocs-check: timed out after {timeout:.0f} s")
    failed = None
    if process.returncode != 0:
        found = re.findall(r"docs-check: exit \d+ at line (\d+)", output)
        failed = block.line + int(found[-1]) - 3 if found else block.line
    return Outcome(block, process.returncode == 0, time.perf_counter() - started, output, failed)


def run(blocks: list[Block], venv: Path, timeout: float, keep: bool = False) -> list[Outcome]:
    env = environment(venv)
    outcomes = []
    by_file: dict[Path, list[Block]] = {}
    for b in blocks:
        if b.skip is None:
            by_file.setdefault(b.path, []).append(b)
    for path, file_blocks in by_file.items():
        scratch = Path(tempfile.mkdtemp(prefix="scalpel-docs-check-"))
        try:
            scratch_copy(scratch)
            for b in file_blocks:
                print(f"docs-check: {b.where} ...", end="", flush=True)
                outcome = run_block(b, scratch, env, timeout)
                print(f" {'ok' if outcome.ok else 'FAILED'} ({outcome.seconds:.0f} s)", flush=True)
                outcomes.append(outcome)
        finally:
            if keep:
                print(f"docs-check: kept {scratch} for {_relative(path)}")
            else:
                shutil.rmtree(scratch, ignore_errors=True)
    return outcomes


def _relative(path: Path) -> str:
    try:
        return path.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path, help="markdown files (default: README.md and docs/**/*.md)")
    parser.add_argument("--list", action="store_true", help="print the blocks that would run and the skipped ones")
    parser.add_argument("--static", action="store_true", help="only check that every command names a real subcommand, "
                        "pipeline, flag, make target or script (fast; nothing runs)")
    parser.add_argument("--venv", type=Path, default=Path(sys.prefix), help="virtual environment (default: this Python's)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per block")
    parser.add_argument("--keep", action="store_true", help="keep the scratch copies")
    args = parser.parse_args(argv)

    blocks = all_blocks([p.resolve() for p in args.files] or None)
    if args.list:
        for b in blocks:
            first = commands(b)[0][1] if commands(b) else "(empty)"
            print(f"{b.where:<24} {'skip' if b.skip else 'run '}  {' '.join(first.split())[:100]}")
            if b.skip:
                print(f"{'':<24}       ({b.skip})")
        runs = sum(b.skip is None for b in blocks)
        print(f"{runs} block(s) to run, {len(blocks) - runs} skipped")
        return 0

    problems = static_problems(blocks)
    for problem in problems:
        print(f"docs-check: {problem}")
    if args.static:
        print(f"docs-check: {len(problems)} problem(s) in {len(blocks)} block(s)")
        return 1 if problems else 0

    outcomes = run(blocks, args.venv.resolve(), args.timeout, args.keep)
    failures = [o for o in outcomes if not o.ok]
    for o in failures:
        print(f"\n=== FAILED {_relative(o.block.path)}:{o.failed_line} (block at line {o.block.line}) ===")
        print(o.output.rstrip()[-4000:])
    skipped = sum(b.skip is not None for b in blocks)
    print(f"\ndocs-check: {len(outcomes) - len(failures)} passed, {len(failures)} failed, {skipped} skipped"
          + (f", {len(problems)} static problem(s) above" if problems else ""))
    return 1 if failures or problems else 0


if __name__ == "__main__":
    raise SystemExit(main())

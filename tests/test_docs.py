"""The documentation's commands: the extractor behind ``make docs-check`` and a static check that
every command in README.md and docs/ names a real subcommand, pipeline, flag, make target or script."""

import importlib.util
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


dc = _load(ROOT / "docs" / "check_commands.py", "check_commands")

PAGE = textwrap.dedent(
    """\
    # Title

    ```bash
    scalpel doctor
    ```

    <!-- docs-check: skip (needs a GPU) -->

    ```bash
    scalpel run vision.detection --device cuda
    ```

    ```python
    print("not a shell block")
    ```

    ````bash
    # a comment line
    echo one && \\
      echo two
    python -c "a = 1
    print(a)"
    ````
    <!-- docs-check: skip -->
    text in between, so the marker above does not apply

    ```bash
    make test
    ```
    """
)


def test_extractor_finds_bash_blocks_with_lines_and_skip_markers(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(PAGE)
    blocks = dc.extract_blocks(page)
    assert [(b.line, b.skip) for b in blocks] == [(4, None), (10, "needs a GPU"), (18, None), (28, None)]
    assert blocks[0].text == "scalpel doctor"
    assert PAGE.splitlines()[blocks[3].line - 1] == "make test"


def test_commands_join_continuations_and_quoted_newlines(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(PAGE)
    block = dc.extract_blocks(page)[2]
    assert [line for line, _ in dc.commands(block)] == [19, 21]
    first, second = (text for _, text in dc.commands(block))
    assert first.split() == ["echo", "one", "&&", "echo", "two"]
    assert second.startswith('python -c "a = 1\nprint(a)"')
    assert dc.segments(first) == [["echo", "one"], ["echo", "two"]]
    assert dc.segments("scalpel doctor --json > out.json 2>&1 | tee log") == [["scalpel", "doctor", "--json"], ["tee", "log"]]
    assert dc.segments("python - <<'EOF'") == [["python", "-"]]
    assert dc.segments("OMP_NUM_THREADS=1 nice -n 10 python benchmarks/x.py --quick") == [["python", "benchmarks/x.py", "--quick"]]


def test_heredoc_bodies_are_input_not_commands(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("```bash\npython - <<'EOF'\nscalpel nosuchcommand\nprint('it')\nEOF\nscalpel doctor\n```\n")
    (block,) = dc.extract_blocks(page)
    assert dc.commands(block) == [(2, "python - <<'EOF'"), (6, "scalpel doctor")]


def test_a_failing_block_reports_the_file_line_of_the_failing_command(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("text\n\n```bash\necho fine\nfalse\necho never\n```\n")
    (block,) = dc.extract_blocks(page)
    outcome = dc.run_block(block, tmp_path, dc.environment(Path(sys.prefix)), timeout=30)
    assert not outcome.ok
    assert outcome.failed_line == 5
    assert "fine" in outcome.output and "never" not in outcome.output


def test_static_check_catches_stale_commands(tmp_path):
    page = tmp_path / "stale.md"
    page.write_text(
        "```bash\n"
        "scalpel nosuchcommand\n"
        "scalpel run nlp.sentiment --no-such-flag 3\n"
        "scalpel run no.such.pipeline\n"
        "make no-such-target\n"
        "python benchmarks/no_such_script.py --quick\n"
        "python -m scalpel.no_such_module\n"
        "torchrun --standalone --nproc-per-node 8 -m scalpel.core.cli run nlp.chat --no-such-flag\n"
        "scalpel doctor --json && make test && python benchmarks/collect.py\n"
        "torchrun --nproc-per-node 2 -m scalpel.core.cli run nlp.chat --method lora && python -m scalpel.core.cli doctor\n"
        "```\n"
    )
    problems = dc.static_problems(dc.extract_blocks(page))
    assert [p.split(":")[1] for p in problems] == ["2", "3", "4", "5", "6", "7", "8"], problems


def test_every_documented_command_names_something_that_exists():
    blocks = dc.all_blocks()
    assert blocks, "no bash blocks found"
    problems = dc.static_problems(blocks)
    assert not problems, "stale commands in the docs:\n" + "\n".join(problems)


def test_every_skip_marker_gives_a_reason():
    missing = [b.where for b in dc.all_blocks() if b.skip == "no reason given"]
    assert not missing, f"docs-check: skip markers without (reason): {missing}"


@pytest.mark.parametrize("name", ["README.md", "docs/index.md", "docs/quickstart.md"])
def test_relative_links_resolve(name):
    import re

    page = ROOT / name
    if not page.exists():
        pytest.skip(f"{name} not written yet")
    broken = []
    for target in re.findall(r"\]\(([^)\s#]+)(?:#[^)]*)?\)", page.read_text()):
        if not re.match(r"^[a-z]+:", target) and not (page.parent / target).exists():
            broken.append(target)
    assert not broken, f"{name}: broken links {broken}"


def test_api_reference_is_up_to_date():
    gen_api = _load(ROOT / "docs" / "gen_api.py", "gen_api")
    committed = (ROOT / "docs" / "api.md").read_text()
    assert committed == gen_api.render(), "docs/api.md is out of date: run python docs/gen_api.py"

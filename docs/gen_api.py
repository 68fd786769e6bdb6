"""Write ``docs/api.md``, the API reference of ``scalpel.core``, from the code's docstrings.

For each public module (its ``__all__``, else the public names it defines): functions and
classes with their signature and the first paragraph of their docstring; dataclass
configs with a table of fields (type, default, the field's docstring or CLI help);
the public methods a class defines itself. ``tests/test_docs.py`` fails when the
committed page differs from what this script writes, so docstrings and reference stay
in step.

    python docs/gen_api.py            # rewrite docs/api.md
    python docs/gen_api.py --check    # exit 1 if docs/api.md is out of date
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib
import inspect
import re
import sys
import textwrap
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "api.md"

#: Modules documented, in page order, with one line on what each is for.
MODULES = (
    ("scalpel.core", "Apply, save, load and merge any method; parameter reports; errors."),
    ("scalpel.core.lora", "LoRA, rsLoRA and DoRA."),
    ("scalpel.core.lora.mixed", "Many LoRA adapters in one batch: each sample names its adapter."),
    ("scalpel.core.sparse", "Sparse fine-tuning: scorers, masks, regrowth."),
    ("scalpel.core.layerwise", "Layer-wise selection, block maps, LLRD, Auto-RGN, LISA."),
    ("scalpel.core.distill", "Knowledge distillation as a loss."),
    ("scalpel.core.fit", "The training loop."),
    ("scalpel.core.recipes", "Methods by name, as the pipelines and the CLI use them."),
    ("scalpel.core.pipeline", "Domain pipelines as data (the `scalpel run` entry points)."),
    ("scalpel.core.config", "Typed configs: YAML, dicts and command-line flags."),
    ("scalpel.core.files", "Atomic, pickle-free files."),
    ("scalpel.core.doctor", "`scalpel doctor`."),
)

HEADER = """# API reference: `scalpel.core`

Generated from the docstrings by `python docs/gen_api.py`; do not edit by hand (the test
suite fails when this page and the code disagree). Signatures are as written in the code;
each entry gives the first paragraph of its docstring; `help(obj)` has the rest. Guides:
[methods](index.md#methods), [training](training.md), [artifacts](artifacts.md).
"""


def first_paragraph(doc: str | None) -> str:
    if not doc:
        return ""
    text = inspect.cleandoc(doc).split("\n\n")[0]
    return " ".join(line.strip() for line in text.splitlines())


def public_names(module: Any) -> list[str]:
    names = getattr(module, "__all__", None)
    if names is None:
        names = [
            n for n, obj in vars(module).items()
            if not n.startswith("_") and getattr(obj, "__module__", None) == module.__name__
            and (inspect.isfunction(obj) or inspect.isclass(obj))
        ]
    return sorted(names, key=lambda n: (not n[0].isupper() or n.isupper(), n.lower()))


class _Source(str):
    """An annotation shown as written (``from __future__ import annotations`` makes them strings)."""

    def __repr__(self) -> str:
        return str(self)


def signature(obj: Any) -> str:
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return "(...)"
    empty = inspect.Signature.empty

    def shown(annotation: Any) -> Any:
        return _Source(annotation) if isinstance(annotation, str) else annotation

    sig = sig.replace(
        parameters=[p.replace(annotation=shown(p.annotation)) if p.annotation is not empty else p for p in sig.parameters.values()],
        return_annotation=shown(sig.return_annotation) if sig.return_annotation is not empty else empty,
    )
    return re.sub(r" at 0x[0-9a-f]+", "", str(sig))


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (a string literal right under a field) of a class and its bases."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__[:-1]):
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, after in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                    and isinstance(after.value.value, str)):
                docs[node.target.id] = first_paragraph(after.value.value)
    return docs


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = repr(f.default)
    elif f.default_factory is not dataclasses.MISSING:
        value = repr(f.default_factory())
    else:
        return "required"
    return f"`{re.sub(r' at 0x[0-9a-f]+', '', value)}`"


def _type(annotation: Any) -> str:
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", repr(annotation))
    return text.replace("|", "\\|")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def document_class(qualname: str, cls: type) -> list[str]:
    kind = "exception" if issubclass(cls, BaseException) else "dataclass" if dataclasses.is_dataclass(cls) else "class"
    lines = [f"### `{qualname}`", ""]
    if kind == "exception":
        bases = ", ".join(b.__name__ for b in cls.__bases__)
        lines += [f"*exception* ({bases})", ""]
    elif kind == "dataclass":  # the fields table below is the signature
        lines += [f"*dataclass* `{qualname}(...)`", ""]
    else:
        lines += [f"```python\nclass {qualname}{signature(cls)}\n```", ""]
    doc = first_paragraph(cls.__doc__)
    if doc and not (kind == "dataclass" and doc.startswith(f"{cls.__name__}(")):  # not dataclass's generated one
        lines += [doc, ""]
    if kind == "dataclass":
        docs = field_docs(cls)
        fields = [f for f in dataclasses.fields(cls) if not f.name.startswith("_")]
        if fields:
            lines += ["| field | type | default | meaning |", "|---|---|---|---|"]
            for f in fields:
                meaning = docs.get(f.name) or f.metadata.get("help", "")
                lines.append(f"| `{f.name}` | `{_type(f.type)}` | {_cell(_default(f))} | {_cell(meaning)} |")
            lines.append("")
    if kind != "exception":
        for name, member in vars(cls).items():
            if name.startswith("_") or not (inspect.isfunction(member) or isinstance(member, (classmethod, staticmethod, property))):
                continue
            function = member.fget if isinstance(member, property) else getattr(member, "__func__", member)
            prefix = "property " if isinstance(member, property) else ""
            sig = "" if isinstance(member, property) else signature(function)
            doc = first_paragraph(function.__doc__)
            lines.append(f"- {prefix}`{name}{sig}`" + (f": {doc}" if doc else ""))
        if lines[-1] != "":
            lines.append("")
    return lines


def document(module_name: str, name: str, obj: Any) -> list[str]:
    qualname = name
    if inspect.isclass(obj):
        return document_class(qualname, obj)
    if callable(obj) and (inspect.isfunction(obj) or inspect.isbuiltin(obj) or hasattr(obj, "__wrapped__")):
        lines = [f"### `{qualname}`", "", f"```python\ndef {qualname}{signature(obj)}\n```", ""]
        if doc := first_paragraph(obj.__doc__):
            lines += [doc, ""]
        return lines
    # a constant: registries change with what is imported, so only plain values are shown
    if isinstance(obj, (str, int, float)) or (isinstance(obj, tuple) and all(isinstance(v, str) for v in obj)):
        return [f"### `{qualname}`", "", f"`{qualname} = {obj!r}`", ""]
    return [f"### `{qualname}`", "", f"*{type(obj).__name__}* (a registry or constant; see `{module_name}`)", ""]


def render() -> str:
    out = [HEADER, "## Modules", ""]
    out += [f"- [`{m}`](#{m.replace('.', '')}): {what}" for m, what in MODULES]
    out.append("")
    for module_name, what in MODULES:
        module = importlib.import_module(module_name)
        out += [f"## `{module_name}`", "", what, ""]
        if doc := first_paragraph(module.__doc__):
            out += [doc, ""]
        for name in public_names(module):
            out += document(module_name, name, getattr(module, name))
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when docs/api.md is out of date")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
        if current != text:
            print(f"{args.out} is out of date: run python docs/gen_api.py", file=sys.stderr)
            return 1
        return 0
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

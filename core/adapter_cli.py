"""``scalpel adapter info DIR`` and ``scalpel adapter merge``."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from scalpel.core.artifacts import SCALPEL_FILE, adapter_info, load_adapter, read_adapter_meta
from scalpel.core.delta import merge, parameter_report
from scalpel.core.errors import BaseModelMismatchError, ScalpelError
from scalpel.core.files import read_json, read_safetensors, write_safetensors

#: Files of a transformers model folder that are weights (rewritten) rather than copied along.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".index.json", ".h5", ".msgpack")


def register(commands: argparse._SubParsersAction) -> None:
    adapter = commands.add_parser("adapter", help="inspect and merge adapters")
    sub = adapter.add_subparsers(dest="adapter_command", metavar="ACTION", required=True)
    info = sub.add_parser("info", help="method, targets, size, base fingerprint, metrics")
    info.add_argument("path")
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    info.set_defaults(handler=_info)
    merge_cmd = sub.add_parser(
        "merge",
        help="fold an adapter into its base and save a plain model",
        description="Base: a transformers model folder (saved with save_pretrained, written the same way) "
        "or a safetensors state dict plus --builder module:callable that builds the empty model "
        "(written as OUT/model.safetensors).",
    )
    merge_cmd.add_argument("--base", required=True, type=Path, help="transformers model folder or .safetensors file")
    merge_cmd.add_argument("--adapter", required=True, type=Path, help="adapter directory")
    merge_cmd.add_argument("--out", required=True, type=Path, help="output directory (must not exist or be empty)")
    merge_cmd.add_argument("--builder", help="module:callable returning the model, for a .safetensors base")
    merge_cmd.add_argument("--base-class", help="e.g. transformers.AutoModelForSequenceClassification")
    merge_cmd.set_defaults(handler=_merge)


def _info(args: argparse.Namespace) -> int:
    info = adapter_info(args.path)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    for key, value in info.items():
        if key == "methods":
            for entry in value:
                print(f"method: {entry['method']}")
                for k, v in entry["config"].items():
                    print(f"  {k}: {v}")
                for k, v in entry.get("details", {}).items():
                    print(f"  {k}: {v}")
        elif isinstance(value, dict):
            print(f"{key}:")
            for k, v in value.items():
                print(f"  {k}: {v}")
        else:
            print(f"{key}: {value}")
    return 0


def _merge(args: argparse.Namespace) -> int:
    recorded = _recorded_base(args.adapter)
    if args.out.exists() and any(args.out.iterdir()):
        raise ScalpelError(f"{args.out} already holds files; choose a new --out directory")
    if args.base.is_dir():
        model = _transformers_base(args.base, args.base_class or recorded.get("class"))
    elif args.base.suffix == ".safetensors":
        model = _built_base(args.base, args.builder or recorded.get("builder"))
    else:
        raise ScalpelError(f"--base {args.base} is neither a transformers model folder nor a .safetensors file")
    model = load_adapter(model, args.adapter)
    report = parameter_report(model)
    merged = merge(model)
    _write_atomically(args.out, lambda tmp: _save(merged, args.base, tmp))
    print(f"merged {args.adapter} into {args.base} ({report} were adapter deltas); wrote {args.out}")
    return 0


def _recorded_base(adapter: Path) -> dict[str, Any]:
    if not (adapter / SCALPEL_FILE).is_file():
        return {}
    return read_adapter_meta(adapter).get("base_model", {})


def _transformers_base(folder: Path, class_path: str | None) -> nn.Module:
    if not (folder / "config.json").is_file():
        raise ScalpelError(f"{folder} has no config.json; pass a folder written by save_pretrained")
    if class_path is None:  # the adapter did not record it: take the architecture the folder names
        architectures = read_json(folder / "config.json").get("architectures") or ["AutoModel"]
        class_path = f"transformers.{architectures[0]}"
    cls = _import(class_path, "--base-class")
    try:
        return cls.from_pretrained(folder)
    except (OSError, ValueError) as err:
        raise ScalpelError(f"cannot load the base model from {folder} with {class_path}: {err}") from err


def _built_base(weights: Path, builder: str | None) -> nn.Module:
    if not builder:
        raise ScalpelError(f"a .safetensors base needs --builder module:callable that returns the model for {weights}")
    model = _import(builder, "--builder")()
    state = read_safetensors(weights)
    result = model.load_state_dict(state, strict=False)
    problems = list(result.missing_keys) + list(result.unexpected_keys)
    if problems:
        raise BaseModelMismatchError(
            f"{weights} does not fit the model built by {builder}: e.g. {problems[0]!r} "
            f"({len(result.missing_keys)} missing, {len(result.unexpected_keys)} unexpected)"
        )
    return model


def _import(path: str, flag: str) -> Any:
    module_name, _, attr = path.partition(":") if ":" in path else path.rpartition(".")
    try:
        target = importlib.import_module(module_name)
        for part in attr.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError, ValueError) as err:
        raise ScalpelError(f"{flag} {path!r} cannot be imported ({err}); give module:callable") from err
    return target


def _save(model: nn.Module, base: Path, out: Path) -> None:
    if hasattr(model, "save_pretrained") and base.is_dir():
        model.save_pretrained(out)  # safetensors by default
        for f in base.iterdir():  # tokenizer, preprocessor and generation files come along
            if f.is_file() and not f.name.endswith(_WEIGHT_SUFFIXES) and not (out / f.name).exists():
                shutil.copy2(f, out / f.name)
    else:  # clone: tied weights share storage, which safetensors refuses
        write_safetensors(out / "model.safetensors", {k: v.clone() for k, v in model.state_dict().items()})


def _write_atomically(out: Path, write) -> None:
    """Write a whole folder beside ``out`` and rename it into place only when complete."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        write(tmp)
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

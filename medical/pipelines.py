"""``scalpel run medical.segmentation`` / ``medical.classification``: the one medical stack.

    scalpel run medical.segmentation --data site/ --base base/ --method lora --max-steps 200
    scalpel run medical.classification --spatial-dims 2 --network resnet10 --quick
    scalpel medical adapt base/ site/ --out runs/site --folds 5 --site B      # the same run

A site folder holds ``dicom/<case>/`` (one series per case) and ``labels/<case>.nii.gz`` (or
``.dcm``, a DICOM SEG; classification: or ``labels.csv``). :func:`build_kit` does the medical
part of a run, :func:`scalpel.core.run.run_adaptation` the rest:

    de-identified ingest (RUN-ingest/, beside the run folder, so --overwrite keeps it) -> labelled
    records -> split by case (held-out, --val-data, or --folds K: one run per fold in RUN/fold<k>/,
    then one on all cases) -> MONAI preprocessing on the base's grid (kits.py) -> the base: a
    checkpoint (--base), the demo's (no --data: synthetic scanner A, cached) or a network from
    scratch -> [run_adaptation: metrics before -> method (+ teacher) -> fit -> metrics after ->
    adapter/ (extra: task, network, inputs, base folder and SHA-256, site, evaluation, cases)
    -> report.md -> result.json]

:func:`train_base` trains a base checkpoint on a site with the same kit (every weight, no held-out case).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from scalpel.core.config import raise_if_problems
from scalpel.core.distill import DistillationTask
from scalpel.core.files import write_json
from scalpel.core.layerwise import FullConfig
from scalpel.core.options import MethodOptions, TrainOptions
from scalpel.core.pipeline import Pipeline, Settings
from scalpel.core.recipes import ModelDefaults, method_configs
from scalpel.core.run import RESULT_FILE, Kit, RunResult, run_adaptation
from scalpel.medical.base import CLASSIFICATION, SEGMENTATION, Base, BaseSpec
from scalpel.medical.folds import FoldMeans, fold_report, run_folds
from scalpel.medical.kits import Records, TaskData, classification_data, classification_facts, segmentation_data, segmentation_spec
from scalpel.medical.networks import SPEC, NetworkSpec, load_checkpoint, lora_target_types, save_checkpoint, spec_from_dict
from scalpel.medical.options import ClassificationOptions, MedicalOptions, SegmentationOptions
from scalpel.medical.predict import compare, predict
from scalpel.medical.segmentation import distillation_task
from scalpel.medical.site import ingest_site, site_records, split_cases
from scalpel.medical.synthetic import STRUCTURES

#: Network options of the synthetic default (small enough for 2 CPU cores); user data gets MONAI's defaults.
DEMO_OPTIONS: dict[str, dict[str, Any]] = {
    "unet": {"channels": (8, 16, 32), "strides": (2, 2), "num_res_units": 1},
    "segresnet": {"init_filters": 8, "blocks_down": (1, 1, 1), "blocks_up": (1, 1)},
    "swinunetr": {"feature_size": 12, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1), "window_size": 4,
                  "norm_name": ("group", {"num_groups": 3})},
    "densenet121": {"init_features": 16, "growth_rate": 8, "block_config": (2, 2, 2, 2)},
    **{f"resnet{d}": {"widen_factor": 0.25} for d in (10, 18, 34, 50)},
}
#: The fold table's columns: the headline metric and one more.
FOLD_METRICS = {SEGMENTATION: ("dice", "hd95"), CLASSIFICATION: ("auc", "accuracy")}


def build_kit(options: MedicalOptions, method: MethodOptions, train: TrainOptions, run_dir: Path, base: Base | None = None) -> Kit:
    """The kit of one medical run into ``run_dir`` (with ``--folds``, the fold runs first).

    Args:
        base: the network to start from; default: ``--base``, the demo's, or one from scratch.

    Raises:
        ScalpelError: bad input (a label off its series' grid, a volume smaller than the patch,
            no labelled case, a base of the other task, ...), with the fix.
    """
    name, site = f"medical.{options.task}", options.data
    if base is None and options.base:
        base = Base.checkpoint(options.base)
    elif base is None and not options.data:  # the embedded default: scanner B, adapted from a base trained on scanner A
        site, folder = demo_site_and_base(options, train, Path(run_dir))
        base = Base.checkpoint(folder)
    problems = []
    if base is not None and base.facts.get("task") != name:
        problems.append(f"the base {base.path} is a {base.facts.get('task') or 'model of unknown task'}; give a {name} base checkpoint")
    if base is None and not any(isinstance(c, FullConfig) for c in method_configs(method, ModelDefaults())):
        problems.append("a parameter-efficient method adapts a trained base: pass --base (a checkpoint folder), "
                        "or train every weight from scratch (--method full)")
    if base is None and not getattr(options, "structures", True):
        problems.append("a network trained from scratch needs --structures (one name per label value 1..N)")
    raise_if_problems(f"{name} options", problems)
    ingest = Path(f"{run_dir}-ingest") if options.deidentify and options.data else None
    records, classes, skipped = _records(options, site, ingest)
    base = base or Base(_scratch_network(options, classes))
    inputs = segmentation_spec(options, base) if options.task == "segmentation" else classification_facts(options, base, classes)
    run = MedicalRun(options, method, train, base, inputs, options.site or Path(site).name, skipped, ingest)
    if options.folds:  # one run per fold into run_dir/fold<k>, then this kit: every case, scored by the folds
        evaluation = f"{options.folds}-fold"
        folds = run_folds(lambda train_cases, held_out, k: lambda fold_dir: run.kit(train_cases, held_out, evaluation, fold=k),
                          records, options.folds, method, train, Path(run_dir), Settings(options, method, train).flat())
        return run.kit(records, [], evaluation, folds=folds)
    if options.val_data:
        held_out = _records(options, options.val_data, ingest and ingest / "val")[0]
        return run.kit(records, held_out, "validation site")
    if not options.val_fraction:
        return run.kit(records, [], "none")
    return run.kit(*split_cases(records, options.val_fraction, train.seed), "held-out")


@dataclasses.dataclass
class MedicalRun:
    """What the kits of one run share; they differ only by their cases (a split, or a fold)."""

    options: MedicalOptions
    method: MethodOptions
    train: TrainOptions
    base: Base
    inputs: Any
    """the segmentation base's :class:`BaseSpec`, or the classifier's facts (classes, size, window, grid)"""
    site: str
    skipped: list[str]
    ingest: Path | None

    def kit(self, train_records: Records, held_out: Records, evaluation: str, *, fold: int | None = None,
            folds: list[dict[str, Any]] | None = None) -> Kit:
        options, name = self.options, f"medical.{self.options.task}"
        make = segmentation_data if options.task == "segmentation" else classification_data
        data: TaskData = make(options, self.inputs, train_records, held_out, self.train)
        model = self.base.build()
        cases = {"train_cases": [r["case"] for r in train_records], "eval_cases": [r["case"] for r in held_out]}
        extra = {**data.facts, "task": name, "network": self.base.network.to_dict(), "method": self.method.method, **self.base.record(),
                 "site": self.site, "evaluation": evaluation, **cases, **({} if fold is None else {"fold": fold})}
        where = f"a de-identified copy in {self.ingest}" if self.ingest else "read as is"

        def report(model: Any, result: RunResult) -> list[str]:
            lines = ["## Data", "", f"- site {self.site}: {where}",
                     f"- {len(train_records)} training case(s): {', '.join(cases['train_cases'])}",
                     f"- {len(held_out)} held-out case(s) ({evaluation}): {', '.join(cases['eval_cases']) or '-'}"]
            lines += [f"- skipped: {why}" for why in self.skipped]
            return lines + (["", *fold_report(folds, FOLD_METRICS[name], len(train_records))] if folds else [])

        return Kit(pipeline=name, model=model, task=data.task, train_data=data.train, eval_data=data.evaluation,
                   metric=data.metric, greater_is_better=True,
                   # LoRA on every convolution and, in Swin/ViT networks, every linear layer (attention qkv/proj, MLP)
                   defaults=ModelDefaults(target_types=lora_target_types(model)), model_id=_model_id(self.base.network),
                   adapter_metadata={"extra": extra, "base_model": {"spec": self.base.network.to_dict(), "sha256": self.base.sha256}},
                   evaluate=FoldMeans(folds) if folds else None, teacher=lambda task, method: _with_teacher(name, task, method),
                   report=report, finish=lambda model, result: {**cases, "site": self.site, "evaluation": evaluation,
                                                               "skipped": self.skipped, "folds": folds or []})


def _records(options: MedicalOptions, site: str, ingest: Path | None) -> tuple[Records, list[str], list[str]]:
    """Labelled records of ``site`` (read from its de-identified copy in ``ingest``), class names, skipped."""
    csv = getattr(options, "labels_csv", "")
    if not csv and options.task == "classification" and (Path(site) / "labels.csv").is_file():
        csv = str(Path(site) / "labels.csv")  # a site's own image-level classes
    return site_records(site, ingest_site(site, ingest) if ingest else None, csv)


def _scratch_network(options: MedicalOptions, classes: list[str]) -> NetworkSpec:
    segmentation = isinstance(options, SegmentationOptions)
    name = options.network or ("unet" if segmentation else "densenet121")
    kwargs = options.network_kwargs or (DEMO_OPTIONS.get(name, {}) if not options.data else {})
    if segmentation:
        return NetworkSpec(name, spatial_dims=len(options.patch), out_channels=len(options.structures) + 1, options=kwargs)
    return NetworkSpec(name, spatial_dims=options.spatial_dims, out_channels=len(classes) or 2, options=kwargs)


def _model_id(network: Any) -> str:
    return getattr(network, "name", "") or getattr(network, "architecture", "network")


def _with_teacher(name: str, task: Any, method: MethodOptions) -> Any:
    """``task`` plus distillation from the base checkpoint ``method.teacher`` (same classes; same
    2-D/3-D patches for segmentation)."""
    teacher, _, facts, _ = load_checkpoint(method.teacher)
    if name == CLASSIFICATION:
        return DistillationTask(task, teacher, "kd", alpha=method.distill_alpha, temperature=method.distill_temperature)
    problems = []
    if len(facts.get("structures") or ()) not in (0, len(task.structure_names)):
        problems.append(f"the teacher segments {facts['structures']}, the student {task.structure_names}")
    if facts.get("patch") and len(facts["patch"]) != len(task.roi_size):
        problems.append(f"the teacher is a {len(facts['patch'])}-D network, the student {len(task.roi_size)}-D; "
                        "give a teacher that sees the same patches")
    raise_if_problems("distillation", problems)
    return distillation_task(task, teacher, alpha=method.distill_alpha, temperature=method.distill_temperature)


def train_base(site: str | os.PathLike, base_dir: str | os.PathLike, spec: BaseSpec | dict[str, Any], *, steps: int = 150,
               lr: float = 1e-2, seed: int = 0, **settings: Any) -> RunResult:
    """Train every weight of a fresh network on every labelled case of ``site`` and save it as a
    base checkpoint in ``base_dir``; the training run (config, metrics, report, step checkpoints)
    is ``base_dir/fit``, replaced on a retrain, and its result's ``adapter_dir`` is the base.

    Args:
        spec: a :class:`BaseSpec` (segmentation), or a ``model.json`` mapping (``task``,
            ``network``, and the task's facts).
        settings: more flat settings of the pipeline (``batch_size=4``, ``device="cpu"``, ...);
            the site is read as is (a base is built from data already cleared for it).
    """
    description = spec.to_dict() if isinstance(spec, BaseSpec) else dict(spec)
    network, facts = spec_from_dict(description["network"]), {k: v for k, v in description.items() if k != "network"}
    given = {"data": str(site), "method": "full", "val_fraction": 0.0, "deidentify": False, "max_steps": steps, "lr": lr,
             "seed": seed, "output_dir": str(Path(base_dir) / "fit"), "overwrite": True, **settings}
    values = PIPELINES[facts.get("task", SEGMENTATION)].settings(given)

    def kit(run_dir: Path) -> Kit:
        made = build_kit(values.options, values.method, values.train, run_dir, base=Base(network, facts))
        return dataclasses.replace(made, finish=lambda model, result: {
            "base_dir": str(save_checkpoint(model.eval(), network, base_dir, **facts))})

    result = run_adaptation(kit, values.method, values.train, run_config=values.flat())
    # every weight is in the checkpoint now: no second copy, and no adapter that tools would list as a site's run
    shutil.rmtree(result.adapter_dir)
    result = dataclasses.replace(result, adapter_dir=str(base_dir))
    write_json(Path(result.run_dir) / RESULT_FILE, dataclasses.asdict(result))
    return result


def demo_site_and_base(options: MedicalOptions, train: TrainOptions, run_dir: Path) -> tuple[str, Path]:
    """Write (once) synthetic scanners A and B and train (once) the base on A; ``(site B, base folder)``.

    Both are cached under ``--base-dir`` (default ``medical-demo-base`` beside the run folder,
    which ``--overwrite`` leaves alone), keyed by what the base is, its steps and the seed.
    """
    from scalpel.medical.classification import write_presence_site
    from scalpel.medical.synthetic import write_site

    segmentation = isinstance(options, SegmentationOptions)
    root = Path(options.base_dir) if options.base_dir else run_dir.parent / "medical-demo-base"
    network = _scratch_network(dataclasses.replace(options, structures=STRUCTURES) if segmentation else options, [])
    cases, edge = (3, 16) if train.quick else (6, 32)
    edge = max(edge, network.downsampling)
    data = root / f"data-{options.task}-{cases}x{edge}-seed{train.seed}"
    if not (data / "done").is_file():
        write, count = (write_site, cases) if segmentation else (write_presence_site, 2 * cases)
        write(data / "A", "A", cases=count, shape=(edge,) * 3, seed=train.seed)
        write(data / "B", "B", cases=count, shape=(edge,) * 3, seed=train.seed + 1)
        (data / "done").write_text("complete\n")
    grid = {"window": list(options.window), "spacing": list(options.spacing), "orientation": options.orientation}
    if segmentation:  # the base sees whole demo volumes
        description = BaseSpec(network, STRUCTURES, patch=(edge,) * len(options.patch), **grid).to_dict()
    else:
        description = {"task": CLASSIFICATION, "network": network.to_dict(), "class_names": ["absent", "present"],
                       "structure": options.structure, "spatial_dims": options.spatial_dims, "size": options.size, **grid}
    key = json.dumps([description, options.base_steps, train.lr, train.seed], sort_keys=True)
    base = root / f"model-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    if not (base / SPEC).is_file():
        train_base(data / "A", base, description, steps=options.base_steps, lr=2 * train.lr, seed=train.seed,
                   device=train.device, progress=train.progress, batch_size=train.batch_size)
    return str(data / "B"), base


_METHOD = MethodOptions(r=4, alpha=8.0, density=0.03, blocks=("first 1",))
#: what --quick stands for: a few steps, cheap sparse scores, a small demo base
QUICK = {"max_steps": 10, "scorer": "magnitude", "base_steps": 60, "log_every": 2}

segmentation = Pipeline(
    name=SEGMENTATION, options_cls=SegmentationOptions, build_kit=build_kit, method=_METHOD,
    train=TrainOptions(max_steps=60, batch_size=2, lr=5e-3, warmup_ratio=0.05), quick=QUICK, predict=predict, compare=compare,
    summary="3-D CT segmentation on MONAI UNet / SegResNet / SwinUNETR (DICOM series + NIfTI/SEG labels), site adaptation")
classification = Pipeline(
    name=CLASSIFICATION, options_cls=ClassificationOptions, build_kit=build_kit, method=_METHOD,
    train=TrainOptions(max_steps=60, batch_size=8, lr=2e-3, warmup_ratio=0.05), quick=QUICK, predict=predict, compare=compare,
    summary="CT classification on MONAI DenseNet121 / ResNet, 2-D slices or 3-D volumes (AUC, sensitivity, specificity)")
PIPELINES = {p.name: p for p in (segmentation, classification)}

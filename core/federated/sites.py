"""A site of any registered pipeline: the pipeline's kit on the site's folder, the method applied
as every site applies it, wrapped in a :class:`SiteClient`.

    client = pipeline_site("medical.segmentation", "hospital_b/", "runs/fed/hospital_b",
                           {"base": "base/", "method": "lora", "r": 4}, aggregator="exact")

The kit gives the site's data (its own training and held-out cases), the base and the task; the
run contract's option names apply (``--method --r --max-steps --lr --seed ...``); ``max_steps``
is the local steps per round.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from scalpel.core.federated.aggregate import Aggregator
from scalpel.core.federated.client import LocalTraining, SiteClient
from scalpel.core.pipeline import get_pipeline
from scalpel.core.recipes import adapt_model


def pipeline_site(pipeline: str, site: str | os.PathLike, work_dir: str | os.PathLike, settings: Mapping[str, Any],
                  *, aggregator: str | Aggregator = "exact", name: str | None = None, keep_stats_local: bool = True) -> SiteClient:
    """The :class:`SiteClient` of ``site`` (a data folder the pipeline reads as ``--data``).

    Raises:
        ScalpelError: unknown pipeline, bad settings, or data the pipeline refuses, with the fix.
    """
    chosen = get_pipeline(pipeline)
    work_dir = Path(work_dir)
    values = chosen.settings({**settings, "data": str(site), "output_dir": str(work_dir)})
    torch.manual_seed(values.train.seed)
    kit = chosen.build_kit(values.options, values.method, values.train, work_dir)
    torch.manual_seed(values.train.seed)  # every site draws the same initial adapter
    model = adapt_model(kit.model, values.method, kit.defaults)
    local = LocalTraining(steps=values.train.max_steps or 20, lr=values.train.lr, seed=values.train.seed,
                          device=values.train.device)
    return SiteClient(name or Path(site).name, model, kit.task, kit.train_data, kit.eval_data, local,
                      aggregator=aggregator, work_dir=work_dir, keep_stats_local=keep_stats_local)

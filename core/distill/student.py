"""Build a shallower student from a transformers teacher, initialised from its weights.

DistilBERT (Sanh et al., 2019, arXiv:1910.01108, Sec. 3) takes "one layer out of two"
of BERT and initialises the student from the teacher's weights: embeddings, the kept
layers and the head are copied, so the student starts close to the teacher and
distillation converges much faster than from random weights. :func:`build_student`
does this for any transformers encoder or decoder whose layers form one
``nn.ModuleList`` of ``config.num_hidden_layers`` blocks (BERT/RoBERTa/MiniLM
``encoder.layer``, DistilBERT ``transformer.layer``, GPT-2 ``transformer.h``,
Llama/Mistral/Qwen ``model.layers``).

The student has the teacher's class (task head included), tokenizer and width; only
the depth changes. Per-layer config lists (such as ``layer_types`` of sliding-window
models) are subset along with the layers.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence

from torch import nn

from scalpel.core.config import raise_if_problems
from scalpel.core.errors import ScalpelError


def layer_stack(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The path and module of a transformers model's stack of ``num_hidden_layers`` blocks.

    Raises:
        ScalpelError: the model has no config or no (single) such stack.
    """
    config = getattr(model, "config", None)
    n = getattr(config, "num_hidden_layers", None)
    if n is None:
        raise ScalpelError(
            f"{type(model).__name__} has no config.num_hidden_layers; build_student works on transformers "
            "models (PreTrainedModel); build other students yourself and distil with DistillationTask"
        )
    stacks = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) == n and name]
    if not stacks:
        raise ScalpelError(f"no nn.ModuleList of {n} layers found in {type(model).__name__}; pass a transformers encoder or decoder")
    # Encoder-decoder models have two stacks; the outermost decoder-only/encoder-only one is what we shrink.
    if len(stacks) > 1:
        names = [name for name, _ in stacks]
        raise ScalpelError(
            f"{type(model).__name__} has several {n}-layer stacks ({names}); build_student handles encoder-only "
            "and decoder-only models"
        )
    return stacks[0]


def student_layers(num_layers: int, every: int = 2, offset: int = 0) -> list[int]:
    """Indices kept when keeping every ``every``-th of ``num_layers`` layers from ``offset``:
    ``[offset, offset + every, ...]`` (DistilBERT: 12 layers, every 2 -> 0, 2, ..., 10)."""
    return list(range(offset, num_layers, every))


def build_student(
    teacher: nn.Module,
    *,
    every: int = 2,
    offset: int = 0,
    layers: Sequence[int] | None = None,
) -> nn.Module:
    """A copy of ``teacher`` with only some of its layers, initialised from the teacher.

    Args:
        teacher: a transformers model (``PreTrainedModel``), encoder or decoder.
        every: keep every ``every``-th layer (2 halves the depth).
        offset: first layer kept.
        layers: explicit teacher layer indices to keep, in order (overrides ``every``/``offset``).

    Returns:
        A new model of the teacher's class whose layer ``j`` holds the weights of the
        teacher's layer ``layers[j]``; every other weight (embeddings, final norm, head)
        is copied unchanged. The teacher is not modified.

    Example:
        >>> student = build_student(bert_teacher, every=2)   # 12 -> 6 layers, as DistilBERT
    """
    path, stack = layer_stack(teacher)
    n = len(stack)
    problems = []
    if layers is None and (every < 1 or not 0 <= offset < n):
        problems.append(f"every must be >= 1 and offset in [0, {n}), got every={every}, offset={offset}")
        raise_if_problems("student layers", problems)
    keep = list(layers) if layers is not None else student_layers(n, every, offset)
    if not keep:
        problems.append("no layer would be kept; choose a smaller 'every' or list the layers")
    if any(not 0 <= i < n for i in keep):
        problems.append(f"layer indices must be in [0, {n}), got {keep}")
    if len(set(keep)) != len(keep):
        problems.append(f"layer indices must be distinct, got {keep}")
    raise_if_problems("student layers", problems)

    config = copy.deepcopy(teacher.config)
    for name, value in list(vars(config).items()):
        if isinstance(value, (list, tuple)) and len(value) == n and name != "architectures":
            setattr(config, name, type(value)(value[i] for i in keep))
    config.num_hidden_layers = len(keep)
    student = type(teacher)(config)
    student.to(next(teacher.parameters()).dtype)

    prefix = re.compile(rf"^{re.escape(path)}\.(\d+)\.")
    position = {old: new for new, old in enumerate(keep)}
    state = {}
    for key, value in teacher.state_dict().items():
        match = prefix.match(key)
        if match is None:
            state[key] = value
        elif int(match.group(1)) in position:
            state[f"{path}.{position[int(match.group(1))]}.{key[match.end():]}"] = value
    student.load_state_dict(state, strict=True)
    return student.train(teacher.training)

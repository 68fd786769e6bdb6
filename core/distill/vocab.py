"""Teacher and student must speak the same vocabulary: token-level distillation compares
the two distributions entry by entry, so entry ``v`` must be the same token in both."""

from __future__ import annotations

from typing import Any

from torch import nn

from scalpel.core.errors import ScalpelError


class VocabularyMismatchError(ScalpelError):
    """Teacher and student use different tokenizers or output vocabularies."""


_FIX = (
    "distill between models that share one tokenizer: build the student from the teacher "
    "(scalpel.core.distill.build_student) or from the same family, or resize the student's "
    "embeddings to the teacher's tokenizer (model.resize_token_embeddings(len(tokenizer)))"
)


def check_tokenizers(teacher_tokenizer: Any, student_tokenizer: Any) -> None:
    """Raise :class:`VocabularyMismatchError` unless both tokenizers map the same strings
    to the same ids (``get_vocab()`` equal)."""
    t_vocab, s_vocab = teacher_tokenizer.get_vocab(), student_tokenizer.get_vocab()
    if t_vocab == s_vocab:
        return
    differing = sorted(
        (tok for tok in set(t_vocab) | set(s_vocab) if t_vocab.get(tok) != s_vocab.get(tok)),
        key=lambda tok: min(t_vocab.get(tok, 1 << 62), s_vocab.get(tok, 1 << 62)),
    )[:5]
    raise VocabularyMismatchError(
        f"the teacher's tokenizer ({len(t_vocab)} tokens) and the student's ({len(s_vocab)} tokens) differ, "
        f"e.g. at {differing}; {_FIX}"
    )


def check_models(teacher: nn.Module, student: nn.Module) -> None:
    """Compare ``config.vocab_size`` of two transformers models (models without a config pass)."""
    t_size = getattr(getattr(teacher, "config", None), "vocab_size", None)
    s_size = getattr(getattr(student, "config", None), "vocab_size", None)
    if t_size is not None and s_size is not None and t_size != s_size:
        raise VocabularyMismatchError(
            f"the teacher's vocabulary has {t_size} entries and the student's {s_size}; {_FIX}"
        )


def check_output_sizes(student_size: int, teacher_size: int, what: str = "logits") -> None:
    """The last axis of the student's and the teacher's outputs must agree."""
    if student_size != teacher_size:
        raise VocabularyMismatchError(
            f"the student's {what} have {student_size} entries on the class/vocabulary axis and the teacher's "
            f"{teacher_size}; {_FIX}"
        )

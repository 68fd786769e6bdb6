"""Server aggregation of adapter updates: FedAvg for dense, sparse and layer-wise tensors, and
four ways to combine LoRA factors.

An update is a site's adapter tensors under the keys :func:`scalpel.core.save_adapter` writes
(PEFT's ``<module>.lora_A.weight`` / ``.lora_B.weight``, ``sparse.<module>.indices/.values/.shape``,
``scalpel.full.<param>``, ``scalpel.stats.<buffer>``) and the number of samples it trained on.

Averaging LoRA's A and B separately is not the average of the products: with weights ``w_k``,
``sum_k w_k B_k A_k != (sum_k w_k B_k)(sum_k w_k A_k)``. The aggregators:

* ``naive``: FedAvg of A and B separately (McMahan et al., 2017), the inexact baseline;
* ``exact``: stack the factors, ``B = [w_1 B_1, ..., w_K B_K]`` ``(out, K r)`` and
  ``A = [A_1; ...; A_K]`` ``(K r, in)``, so ``B A = sum_k w_k B_k A_k`` exactly, then return to
  rank ``r`` by SVD (the best rank-r approximation, Eckart-Young) and report the relative
  Frobenius error of that truncation (zero when the stacked rank is <= r);
* ``ffa``: FFA-LoRA (Sun et al., 2024, arXiv:2403.12313): A stays as initialised, only B is
  trained and averaged, so ``(sum_k w_k B_k) A`` is exact;
* ``fedsa``: FedSA-LoRA (Guo et al., 2024, arXiv:2410.01463): A is shared and averaged, B stays
  at each site (a personalised adapter).

Normalisation statistics (``scalpel.stats.*``) stay at each site by default (FedBN, Li et al.,
2021, arXiv:2102.07623): they are what differs most between scanners.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from scalpel.core.errors import ScalpelError
from scalpel.core.registry import Registry

STATS_PREFIX = "scalpel.stats."
SPARSE_PREFIX = "sparse."
_FACTOR = re.compile(r"^(?P<module>.*)\.lora_(?P<side>A|B)\.weight$")


@dataclass(frozen=True)
class SiteUpdate:
    """What one site returns after a round: its shared adapter tensors and how many samples trained them."""

    site: str
    tensors: dict[str, Tensor]
    samples: int
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class Aggregate:
    """The server's result of one round: the new global tensors and, per LoRA module, the
    relative Frobenius error of the rank truncation (``exact`` only)."""

    tensors: dict[str, Tensor]
    truncation_error: dict[str, float] = field(default_factory=dict)

    @property
    def max_truncation_error(self) -> float:
        return max(self.truncation_error.values(), default=0.0)


@dataclass(frozen=True)
class Aggregator:
    """How one strategy combines updates and which tensors never leave a site.

    Attributes:
        name: registry name (``--aggregator``).
        combine_lora: ``(A list, B list, weights) -> (A, B, truncation error or None)`` for one module.
        personal: keys a site keeps for itself (not sent, not overwritten by the global adapter).
        frozen_a: the A factors are never trained (FFA-LoRA); clients freeze them.
    """

    name: str
    combine_lora: Callable[[list[Tensor], list[Tensor], Tensor], tuple[Tensor, Tensor, float | None]]
    personal: Callable[[str], bool]
    frozen_a: bool = False
    summary: str = ""

    def shared(self, key: str, *, keep_stats_local: bool = True) -> bool:
        """True when ``key`` is sent to the server (and replaced by the global value)."""
        return not self.personal(key) and not (keep_stats_local and key.startswith(STATS_PREFIX))

    def aggregate(self, updates: Sequence[SiteUpdate], *, uniform: bool = False) -> Aggregate:
        """Combine the sites' shared tensors, weighted by samples (``uniform``: equal weights).

        Raises:
            ScalpelError: no update, or updates holding different keys or shapes.
        """
        if not updates:
            raise ScalpelError("no site update to aggregate; wait for at least one site (see --quorum)")
        keys = set(updates[0].tensors)
        for update in updates[1:]:
            if set(update.tensors) != keys:
                odd = sorted(keys ^ set(update.tensors))[:3]
                raise ScalpelError(f"site {update.site!r} sent other adapter tensors than {updates[0].site!r} ({odd}); "
                                   "every site must train the same method on the same base")
        weights = sample_weights([u.samples for u in updates], uniform=uniform)
        out, errors = {}, {}
        factors = lora_modules(keys)
        for module, (key_a, key_b) in factors.items():
            A, B, error = self.combine_lora([u.tensors[key_a] for u in updates], [u.tensors[key_b] for u in updates], weights)
            out[key_a], out[key_b] = A, B
            if error is not None:
                errors[module] = error
        lora_keys = {k for pair in factors.values() for k in pair}
        for key in sorted(keys - lora_keys):
            if key.startswith(SPARSE_PREFIX):
                if key.endswith(".indices"):
                    out.update(sparse_average(updates, key[: -len(".indices")], weights))
            else:
                out[key] = weighted_mean([u.tensors[key] for u in updates], weights)
        return Aggregate(out, errors)


def sample_weights(samples: Sequence[int], *, uniform: bool = False) -> Tensor:
    """FedAvg weights ``n_k / sum n``, float64; equal weights when ``uniform`` or no sample was counted."""
    counts = torch.tensor([float(s) for s in samples], dtype=torch.float64)
    if uniform or counts.sum() <= 0:
        counts = torch.ones_like(counts)
    if (counts < 0).any():
        raise ScalpelError(f"sample counts must be >= 0, got {list(samples)}")
    return counts / counts.sum()


def weighted_mean(tensors: Sequence[Tensor], weights: Tensor) -> Tensor:
    """``sum_k w_k t_k`` in float64, returned in the first tensor's dtype; integer tensors (counters) too."""
    first = tensors[0]
    if any(t.shape != first.shape for t in tensors):
        raise ScalpelError(f"sites sent tensors of different shapes {[tuple(t.shape) for t in tensors]}; same base and method needed")
    total = sum(w * t.double() for w, t in zip(weights.tolist(), tensors))
    return total.round().to(first.dtype) if not first.is_floating_point() else total.to(first.dtype)


def sparse_average(updates: Sequence[SiteUpdate], prefix: str, weights: Tensor) -> dict[str, Tensor]:
    """FedAvg of index/value deltas of one layer over the union of their supports.

    A site that did not select an index contributes zero there, so the result equals FedAvg of
    the dense deltas restricted to the union (and the union may grow round after round).
    """
    shape = updates[0].tensors[f"{prefix}.shape"]
    numel = int(torch.prod(shape))
    dense = torch.zeros(numel, dtype=torch.float64)
    covered = torch.zeros(numel, dtype=torch.bool)
    for w, update in zip(weights.tolist(), updates):
        indices = update.tensors[f"{prefix}.indices"].long()
        dense.index_add_(0, indices, w * update.tensors[f"{prefix}.values"].double())
        covered[indices] = True
    union = covered.nonzero().squeeze(1)
    values_dtype = updates[0].tensors[f"{prefix}.values"].dtype
    index_dtype = updates[0].tensors[f"{prefix}.indices"].dtype
    return {f"{prefix}.indices": union.to(index_dtype), f"{prefix}.values": dense[union].to(values_dtype),
            f"{prefix}.shape": shape.clone()}


def lora_modules(keys: set[str] | Sequence[str]) -> dict[str, tuple[str, str]]:
    """``module -> (A key, B key)`` for every LoRA module with both factors among ``keys``."""
    sides: dict[str, dict[str, str]] = {}
    for key in keys:
        if m := _FACTOR.match(key):
            sides.setdefault(m["module"], {})[m["side"]] = key
    return {mod: (s["A"], s["B"]) for mod, s in sorted(sides.items()) if len(s) == 2}


def is_lora_b(key: str) -> bool:
    return (m := _FACTOR.match(key)) is not None and m["side"] == "B"


def is_lora_a(key: str) -> bool:
    return (m := _FACTOR.match(key)) is not None and m["side"] == "A"


# ------------------------------------------------------------------------- LoRA rules


def naive_factors(As: list[Tensor], Bs: list[Tensor], weights: Tensor) -> tuple[Tensor, Tensor, None]:
    """FedAvg of A and B separately: ``(sum w B)(sum w A) != sum w B A`` in general."""
    return weighted_mean(As, weights), weighted_mean(Bs, weights), None


def exact_factors(As: list[Tensor], Bs: list[Tensor], weights: Tensor) -> tuple[Tensor, Tensor, float]:
    """Stack, then the best rank-r factors of ``sum_k w_k B_k A_k``, and the truncation's relative error.

    Factor shapes follow the layer (``A: (r, in, *kernel)``, ``B: (out, r, *ones)``); they are
    flattened to ``(r, in')`` and ``(out, r)``. The SVD runs on ``(K r)``-sized QR factors, so
    the ``(out, in')`` product is never formed. Returns ``(A, B, ||P - B A||_F / ||P||_F)``.
    """
    r = As[0].shape[0]
    stacked_b = torch.cat([w * b.double().reshape(b.shape[0], r) for w, b in zip(weights.tolist(), Bs)], dim=1)
    stacked_a = torch.cat([a.double().reshape(r, -1) for a in As], dim=0)
    q_b, r_b = torch.linalg.qr(stacked_b)            # (out, m), (m, Kr)
    q_a, r_a = torch.linalg.qr(stacked_a.T)          # (in', m'), (m', Kr)
    u, s, vh = torch.linalg.svd(r_b @ r_a.T, full_matrices=False)  # the product's singular values, on a tiny matrix
    root = s[:r].sqrt()                              # r' = min(r, rank bound) directions
    new_b = (q_b @ u[:, : len(root)]) * root         # (out, r')
    new_a = root[:, None] * (vh[: len(root)] @ q_a.T)  # (r', in')
    if new_b.shape[1] < r:                           # fewer directions than the rank: pad with zeros
        new_b = torch.cat([new_b, new_b.new_zeros(new_b.shape[0], r - new_b.shape[1])], dim=1)
        new_a = torch.cat([new_a, new_a.new_zeros(r - new_a.shape[0], new_a.shape[1])], dim=0)
    total = float(s.pow(2).sum())
    error = float(s[r:].pow(2).sum() / total) ** 0.5 if total > 0 else 0.0
    return new_a.reshape(As[0].shape).to(As[0].dtype), new_b.reshape(Bs[0].shape).to(Bs[0].dtype), error


def stacked_product(As: list[Tensor], Bs: list[Tensor], weights: Tensor) -> Tensor:
    """``sum_k w_k B_k A_k`` as an ``(out, in')`` float64 matrix (the target of :func:`exact_factors`)."""
    r = As[0].shape[0]
    return sum(w * b.double().reshape(b.shape[0], r) @ a.double().reshape(r, -1) for w, a, b in zip(weights.tolist(), As, Bs))


def frozen_a_factors(As: list[Tensor], Bs: list[Tensor], weights: Tensor) -> tuple[Tensor, Tensor, float]:
    """FFA-LoRA: every site holds the same frozen A, so averaging B is exact (error 0)."""
    for a in As[1:]:
        if not torch.equal(a, As[0]):
            raise ScalpelError("ffa aggregation needs the same frozen A at every site, and the sites' A differ; "
                               "start every site from the server's initial adapter (the clients do so when A is frozen)")
    return As[0].clone(), weighted_mean(Bs, weights), 0.0


def shared_a_factors(As: list[Tensor], Bs: list[Tensor], weights: Tensor) -> tuple[Tensor, Tensor, None]:
    """FedSA-LoRA: A averaged; B is personal, so what arrives here is only a placeholder mean."""
    return weighted_mean(As, weights), weighted_mean(Bs, weights), None


AGGREGATORS: Registry[Aggregator] = Registry("aggregator")
for _agg in (
    Aggregator("exact", exact_factors, lambda key: False,
               summary="stack the sites' factors, SVD back to rank r (truncation error reported)"),
    Aggregator("naive", naive_factors, lambda key: False, summary="FedAvg of A and B separately (inexact baseline)"),
    Aggregator("ffa", frozen_a_factors, lambda key: False, frozen_a=True, summary="FFA-LoRA: A frozen, B averaged (exact)"),
    Aggregator("fedsa", shared_a_factors, is_lora_b, summary="FedSA-LoRA: A averaged, B kept per site (personalised)"),
):
    AGGREGATORS.add(_agg.name, _agg)

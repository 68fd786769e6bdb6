"""Client-level differential privacy on adapter updates (DP-FedAvg, McMahan et al., 2018,
arXiv:1710.06963), with the privacy spent counted by Opacus' RDP accountant.

Each round, every site's update ``u_k = local_k - global`` (all its shared tensors as one
vector) is clipped to L2 norm ``clip``; the server averages the clipped updates with equal
weights and adds Gaussian noise of standard deviation ``noise_multiplier * clip / n`` per
coordinate (``n`` sites this round). One round is one step of the subsampled Gaussian
mechanism with sampling rate ``n / total sites``; the accountant turns the rounds into
``(epsilon, delta)``.

The guarantee covers a whole site's data (client level), and holds for aggregators whose result
is a mean of the sites' tensors (``naive``, ``ffa``, ``fedsa``); ``exact`` re-factorises a sum of
products, whose sensitivity the factor clip does not bound, so it is refused with privacy on.
FFA-LoRA was proposed with this setting in mind: with A frozen, the noise lands on B alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from scalpel.core.config import raise_if_problems
from scalpel.core.errors import MissingDependencyError


@dataclass(frozen=True)
class PrivacyConfig:
    """Client-level DP settings; ``noise_multiplier`` 0 means off."""

    clip: float = field(default=1.0, metadata={"help": "L2 bound of one site's update per round"})
    noise_multiplier: float = field(default=0.0, metadata={"help": "noise std / clip; 0: no differential privacy"})
    delta: float = field(default=1e-5, metadata={"help": "delta of the reported (epsilon, delta)"})
    seed: int = field(default=0, metadata={"help": "seed of the server's noise"})

    def __post_init__(self) -> None:
        problems = []
        if not self.clip > 0:
            problems.append(f"clip must be > 0, got {self.clip}")
        if self.noise_multiplier < 0:
            problems.append(f"noise_multiplier must be >= 0, got {self.noise_multiplier}")
        if not 0 < self.delta < 1:
            problems.append(f"delta must be in (0, 1), got {self.delta}")
        raise_if_problems("PrivacyConfig", problems)

    @property
    def enabled(self) -> bool:
        return self.noise_multiplier > 0


def clip_update(local: dict[str, Tensor], reference: dict[str, Tensor], clip: float) -> tuple[dict[str, Tensor], float]:
    """``reference + u * min(1, clip / ||u||)`` with ``u = local - reference`` over all floating tensors;
    returns the clipped tensors and ``||u||`` before clipping."""
    keys = [k for k, v in local.items() if v.is_floating_point() and k in reference]
    norm = math.sqrt(sum(float((local[k].double() - reference[k].double()).pow(2).sum()) for k in keys))
    scale = min(1.0, clip / norm) if norm > 0 else 1.0
    out = dict(local)
    for k in keys:
        out[k] = (reference[k].double() + scale * (local[k].double() - reference[k].double())).to(local[k].dtype)
    return out, norm


def add_noise(mean: dict[str, Tensor], config: PrivacyConfig, sites: int, round_index: int) -> dict[str, Tensor]:
    """The server's noise on the mean of ``sites`` clipped updates: ``N(0, (z clip / sites)^2)`` per coordinate.

    Drawn from a generator seeded by ``(seed, round)`` so a resumed server adds the same noise.
    """
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + round_index)
    std = config.noise_multiplier * config.clip / max(sites, 1)
    out = {}
    for key in sorted(mean):
        value = mean[key]
        if value.is_floating_point():
            noise = torch.randn(value.shape, generator=generator, dtype=torch.float64) * std
            value = (value.double() + noise).to(value.dtype)
        out[key] = value
    return out


def spent_epsilon(config: PrivacyConfig, sample_rates: list[float]) -> float:
    """``epsilon`` at ``config.delta`` after one round per sampling rate, from Opacus' RDP accountant.

    Raises:
        MissingDependencyError: opacus is not installed.
    """
    if not sample_rates:
        return 0.0
    if not config.enabled:
        return math.inf  # no noise: no guarantee
    try:
        from opacus.accountants import RDPAccountant
    except ImportError as err:
        raise MissingDependencyError("opacus", "the privacy accountant of federated DP", extra="federated") from err
    accountant = RDPAccountant()
    for rate in sample_rates:
        accountant.step(noise_multiplier=config.noise_multiplier, sample_rate=min(1.0, rate))
    return float(accountant.get_epsilon(delta=config.delta))

"""Fusing image and text vectors into one item vector.

Weighted fusion (the survey's h = a*f(image) + b*g(text)):
    fused = normalise(alpha * img + beta * txt)
for rows with a caption; rows without one take the image vector as their fused vector.
Inputs are L2-normalised rows; outputs are L2-normalised rows.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


def l2_normalise(x: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    return torch.nn.functional.normalize(x.float(), dim=-1)


@dataclass(frozen=True)
class WeightedFusion:
    """fused = normalise(alpha*img + beta*txt); image vector where there is no text."""

    alpha: float = 0.5
    beta: float = 0.5

    def __post_init__(self) -> None:
        if self.alpha < 0 or self.beta < 0 or self.alpha + self.beta <= 0:
            raise ValueError(
                f"fusion weights must be >= 0 and not both 0 (got alpha={self.alpha}, "
                f"beta={self.beta}); e.g. --alpha 0.5 --beta 0.5"
            )

    def __call__(self, img: torch.Tensor, txt: torch.Tensor, has_text: torch.Tensor) -> torch.Tensor:
        """img, txt: [n, d] normalised; has_text: [n] bool. Rows of txt where not has_text are ignored."""
        mixed = self.alpha * img + self.beta * torch.where(has_text[:, None], txt, torch.zeros_like(txt))
        fused = torch.where(has_text[:, None], mixed, img)
        return l2_normalise(fused)

    def params(self) -> dict:
        return {"kind": "weighted", "alpha": self.alpha, "beta": self.beta}


def fusion_from_params(params: dict) -> WeightedFusion:
    """Inverse of `params()`: rebuild the fusion recorded in a manifest."""
    if params.get("kind") != "weighted":
        raise ValueError(f"unknown fusion kind {params.get('kind')!r}; known: weighted")
    return WeightedFusion(alpha=float(params["alpha"]), beta=float(params["beta"]))

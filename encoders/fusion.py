"""Fusing image and text vectors into one item vector.

Weighted fusion (the survey's h = a*f(image) + b*g(text)):
    fused = normalise(alpha * img + beta * txt)

Attention fusion (the survey's learned weights c = softmax(v . W[f; g])):
    c = softmax(V (W [img; txt] + b_W) + b_V)      W: h x 2d, V: 2 x h   (c has 2 entries)
    fused = normalise(c_0 * img + c_1 * txt)
W, b_W, V, b_V are learned by `fusionindex finetune --fusion attention` (contrastive loss
between a shopper's query text and the fused item vector) and saved with the model in
`fusion.safetensors`. V starts at zero, so an untrained attention fusion is weighted
0.5/0.5 fusion.

Both: rows without a caption take the image vector as their fused vector. Inputs and
outputs are L2-normalised rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from encoders.settings import check_fusion_weights


def l2_normalise(x: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    return torch.nn.functional.normalize(x.float(), dim=-1)


@dataclass(frozen=True)
class WeightedFusion:
    """fused = normalise(alpha*img + beta*txt); image vector where there is no text."""

    alpha: float = 0.5
    beta: float = 0.5

    def __post_init__(self) -> None:
        check_fusion_weights(self.alpha, self.beta)

    def __call__(self, img: torch.Tensor, txt: torch.Tensor, has_text: torch.Tensor) -> torch.Tensor:
        """img, txt: [n, d] normalised; has_text: [n] bool. Rows of txt where not has_text are ignored."""
        mixed = self.alpha * img + self.beta * torch.where(has_text[:, None], txt, torch.zeros_like(txt))
        fused = torch.where(has_text[:, None], mixed, img)
        return l2_normalise(fused)

    def params(self) -> dict:
        return {"kind": "weighted", "alpha": self.alpha, "beta": self.beta}


class AttentionFusion(torch.nn.Module):
    """Per-item modality weights c = softmax(V W [img; txt]); see the module docstring."""

    def __init__(self, dim: int, hidden: int = 64):
        super().__init__()
        self.dim, self.hidden = dim, hidden
        self.W = torch.nn.Linear(2 * dim, hidden)
        self.V = torch.nn.Linear(hidden, 2)
        torch.nn.init.zeros_(self.V.weight)
        torch.nn.init.zeros_(self.V.bias)

    def weights(self, img: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
        """[n, 2] modality weights (image, text), rows summing to 1."""
        return torch.softmax(self.V(self.W(torch.cat([img, txt], dim=-1))), dim=-1)

    def forward(self, img: torch.Tensor, txt: torch.Tensor, has_text: torch.Tensor) -> torch.Tensor:
        img, txt = img.float(), txt.float()
        c = self.weights(img, txt)
        mixed = c[:, :1] * img + c[:, 1:] * txt
        return l2_normalise(torch.where(has_text[:, None].to(img.device), mixed, img))

    def params(self) -> dict:
        return {"kind": "attention", "dim": self.dim, "hidden": self.hidden}


Fusion = WeightedFusion | AttentionFusion


def fusion_from_params(params: dict, learned: AttentionFusion | None = None) -> Fusion:
    """Inverse of `params()`: rebuild the fusion recorded in a manifest.

    Attention fusion's weights live with the model: pass the model's `learned` fusion.
    """
    kind = params.get("kind")
    if kind == "weighted":
        return WeightedFusion(alpha=float(params["alpha"]), beta=float(params["beta"]))
    if kind == "attention":
        if learned is None:
            raise ValueError(
                "this index was built with attention fusion, but the model has no learned fusion "
                "(fusion.safetensors); pass the fine-tuned --model"
            )
        return learned
    raise ValueError(f"unknown fusion kind {kind!r}; known: weighted, attention")

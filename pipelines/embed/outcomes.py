"""What goes into the model handler and what comes out, per item (numpy only: no torch, no Beam)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ItemInput:
    id: str
    caption: str | None
    image: bytes | None


@dataclass(frozen=True)
class Embedded:
    image: np.ndarray
    text: np.ndarray
    fused: np.ndarray
    has_text: bool


@dataclass(frozen=True)
class Rejected:
    reason: str  # a short stable code (docs/bad-data.md: What happens to bad data)
    message: str


Outcome = Embedded | Rejected

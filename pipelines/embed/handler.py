"""The embedder as Beam's RunInference `ModelHandler`: a thin adapter over pipelines/embed/embedder.py.

The Beam engine uses it for what Beam's interface gives (batch sizing, --large-model's one model
per machine through `share_model_across_processes`), and it works unchanged inside
`RunInference(handler)`. Everything else is the Beam-free `Embedder`'s, which Spark executors
and the unit worker use without importing Beam.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from apache_beam.ml.inference.base import ModelHandler

from encoders.models import ResolvedModel
from encoders.towers import Towers
from pipelines.embed.embedder import Embedder, wire_dtype
from pipelines.embed.outcomes import ItemInput, Outcome
from pipelines.embed.settings import EmbedSettings, Runtime
from pipelines.threads import ThreadLayout

__all__ = ["EmbeddingModelHandler", "wire_dtype"]


class EmbeddingModelHandler(Embedder, ModelHandler[ItemInput, Outcome, Towers]):
    """An `Embedder` that is also a RunInference ModelHandler (RunInference shares the towers
    across threads)."""

    def __init__(
        self,
        settings: EmbedSettings,
        *,
        model: ResolvedModel | None = None,
        runtime: Runtime | None = None,
        threads: ThreadLayout | None = None,
    ):
        Embedder.__init__(self, settings, model=model, runtime=runtime, threads=threads)
        # max_batch_weight is left out: it crashes BatchElements in Beam 2.77.
        ModelHandler.__init__(
            self, min_batch_size=1, max_batch_size=settings.batch_size, large_model=settings.large_model
        )

    def run_inference(
        self, batch: Sequence[ItemInput], model: Towers, inference_args: dict[str, Any] | None = None
    ) -> Iterable[Outcome]:
        return self.complete(self.prepare(batch, model), batch, model)

    def get_metrics_namespace(self) -> str:
        return "fusionindex"

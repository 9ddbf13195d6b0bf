"""What `embed` is asked to do (`EmbedSettings`) and what that resolves to on a machine (`Runtime`).

Both are frozen and validated on creation, flag names in the messages: the CLI builds the
settings from its flags, and the handler, the unit worker, the run key and the manifest all
take the object whole. Defaults and allowed values live here and nowhere else.

Four settings say *how* to run rather than *what* to compute, and resolve per machine:
device (auto: CUDA when torch sees it), preprocessing (auto: the tensor path where the checkpoint's
recipe allows it, on a CPU too; `resolve_preprocess`, which needs no device),
precision (auto: bf16 autocast on CUDA; always fp32 on a CPU) and model sharing
(--large-model: one model per machine). `resolve_runtime` is a pure function of the settings,
whether CUDA is there and whether the checkpoint has a tensor recipe; each committed shard
records the Runtime it was made with, and a re-run reuses a shard only where its own Runtime
is the same (threads aside). The preprocessing path is also part of what makes a previous run's
vectors comparable (pipelines/embed/run.py `previous_run`).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass, field, fields

from encoders.errors import SettingsError
from encoders.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS
from encoders.options import check_options, flag_of, nested, option
from encoders.settings import FUSIONS, check_fusion_weights
from pipelines.inputs import PLAN_THREADS, Columns
from pipelines.threads import THREADS_ENV  # noqa: F401  (re-exported: a user's torch threads per process)

log = logging.getLogger(__name__)

PREPROCESS_MODES = ("auto", "pil", "tensor")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DECODE_AHEAD = ("auto", "on", "off", "stream")
DUPLICATE_POLICIES = ("reject", "allow")
ENGINES = ("beam", "spark")  # beam: Beam options (--runner ...) pick the runner; spark: --spark-master

# Field metadata: whether a setting enters the run key that decides if an output directory's
# committed shards belong to this run. "runtime": covered per shard by the resolved Runtime.
NOT_KEYED = {"run_key": False}
RUNTIME = {"run_key": False, "runtime": True}


@dataclass(frozen=True)
class EmbedSettings:
    # files, globs, directories; the run key holds the files they expand to instead
    inputs: tuple[str, ...] = option(
        flag="--input", metavar="GLOB", help="Parquet files, globs or directories (local or fsspec URLs)"
    )
    output: str = option(
        metavar="DIR", help="output directory (embeddings/, rejects/, manifest.json)", **NOT_KEYED
    )  # the run key lives in it
    model: str = option(metavar="SPEC", help="a CLIP checkpoint or a fine-tuned directory (local or URL), or a hub id")
    batch_size: int = option(64, at_least=1, help="items per forward pass (on a GPU use 256 or more)")
    fusion: str = option(
        "weighted",
        choices=FUSIONS,
        help="weighted: normalise(alpha*image + beta*text); attention: the model's learned per-item weights",
    )
    alpha: float = option(0.5, help="image weight")
    beta: float = option(0.5, help="text weight")
    columns: Columns = nested(default_factory=Columns, only=("id", "caption", "image", "status", "carry"))
    max_image_pixels: int = option(DEFAULT_MAX_PIXELS, at_least=1, help="reject images declaring more pixels")
    max_image_bytes: int = option(DEFAULT_MAX_BYTES, at_least=1, help="reject encoded images larger than this")
    allow_pickle: bool = option(False, help="allow pickle (*.bin) weights; only for files you trust")
    duplicate_ids: str = option(
        "reject",
        choices=DUPLICATE_POLICIES,
        help="reject: keep the first row of an id by input order, reject later ones; allow: keep them all",
    )
    skip_bad_files: bool = option(
        False, help="record unreadable Parquet files/row groups in the manifest and go on (default: fail)"
    )
    exact_shapes: bool = option(
        False,
        help="pad every model call to --batch-size rows and captions to the model's full context, so a row's "
        "vectors do not depend on the rows batched with it (an incremental night equals a full rebuild byte "
        "for byte); slower, see the README",
    )
    device: str | None = option(None, help="torch device (default: cuda when present, else cpu)", **RUNTIME)
    preprocess: str = option(
        "auto",
        choices=PREPROCESS_MODES,
        help="tensor: batched JPEG decode + resize with torchvision (on the GPU with CUDA); pil: the checkpoint's "
        "own processor on PIL images; auto: tensor where the checkpoint resizes the short side + center crops "
        "(CLIP's), pil otherwise and with --large-model",
        **RUNTIME,
    )
    precision: str = option("auto", choices=PRECISIONS, help="auto: bf16 autocast on CUDA, fp32 on CPU", **RUNTIME)
    large_model: bool = option(
        False, help="share one model across worker processes (RunInference large_model)", **RUNTIME
    )
    # stream: on a CUDA stream of its own, unmeasured
    decode_ahead: str = option(
        "auto",
        choices=DECODE_AHEAD,
        help="read, decode and tokenize the next batch in threads during the forward pass (auto: on CUDA only)",
        **NOT_KEYED,
    )
    restart: bool = option(
        False, help="recompute instead of reusing the shards an interrupted identical run committed", **NOT_KEYED
    )
    plan_threads: int = option(
        PLAN_THREADS,
        at_least=1,
        metavar="N",
        help="Parquet footers the driver reads at once while planning",
        **NOT_KEYED,
    )
    # Which engine runs the units; not keyed: both commit the same shards, so either may resume the other's run.
    engine: str = option(
        "beam",
        choices=ENGINES,
        help="beam (Beam options such as --runner pick the runner) or spark (native Spark executors)",
        **NOT_KEYED,
    )
    spark_master: str | None = option(
        None,
        metavar="URL",
        help="with --engine spark: local[N], local-cluster[N,CORES,MB], yarn, k8s://..., spark://... "
        "(default: spark-submit's master, else local[*])",
        **NOT_KEYED,
    )
    spark_conf: tuple[str, ...] = option(
        (),
        metavar="KEY=VALUE",
        help="with --engine spark: Spark properties, e.g. spark.executor.memory=4g",
        **NOT_KEYED,
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", tuple(self.inputs))
        check_options(self)
        if self.fusion == "weighted":
            check_fusion_weights(self.alpha, self.beta)
        object.__setattr__(self, "spark_conf", tuple(self.spark_conf or ()))
        self._check_spark()

    def _check_spark(self) -> None:
        engine, master, conf = (flag_of(self, n) for n in ("engine", "spark_master", "spark_conf"))
        if self.engine != "spark":
            for flag, value in ((master, self.spark_master), (conf, self.spark_conf)):
                if value:
                    raise SettingsError(f"{flag} applies to {engine} spark only; add {engine} spark or drop {flag}")
            return
        if self.spark_master is not None and not self.spark_master.strip():
            raise SettingsError(f"{master} is empty; give a master URL such as local[4] or yarn")
        for kv in self.spark_conf:
            key, eq, _ = kv.partition("=")
            if not eq or not key.strip():
                raise SettingsError(f"{conf} {kv!r}: expected KEY=VALUE, e.g. spark.executor.memory=4g")
        if self.large_model:
            raise SettingsError(
                f"{flag_of(self, 'large_model')} shares one model per machine through Beam's MultiProcessShared; "
                f"with {engine} spark each Python worker loads its own: drop {flag_of(self, 'large_model')}, "
                "or give executors fewer cores"
            )

    def spark_properties(self) -> dict[str, str]:
        """--spark-conf as a dict (a later KEY wins)."""
        return dict(kv.split("=", 1) for kv in self.spark_conf)

    def weighted_fusion(self):
        """The weighted fusion asked for (encoders.fusion.WeightedFusion), or None for the model's
        learned attention fusion."""
        from encoders.fusion import WeightedFusion  # torch: not needed to parse and validate

        return WeightedFusion(self.alpha, self.beta) if self.fusion == "weighted" else None

    def as_dict(self) -> dict:
        """JSON-ready form, as recorded in the manifest."""
        d = asdict(self)
        d["inputs"] = list(self.inputs)
        d["columns"].pop("image_struct")
        d["columns"]["carry"] = list(self.columns.carry)
        d["spark_conf"] = [redact_conf(kv) for kv in self.spark_conf]
        return d

    def keyed(self) -> dict:
        """The settings that decide the output's bytes (see the run key)."""
        d = self.as_dict()
        return {f.name: d[f.name] for f in fields(self) if f.metadata.get("run_key", True) and f.name != "inputs"}


SECRET_WORDS = ("secret", "password", "token", "credential")


def redact_conf(kv: str) -> str:
    """A --spark-conf KEY=VALUE as recorded in manifests: values of keys naming secrets hidden."""
    key, _, value = kv.partition("=")
    return f"{key}=***" if any(w in key.lower() for w in SECRET_WORDS) else kv


# The tensor path's pixel revision, recorded in every Runtime that runs it: bump it with any change to
# what encoders/tensor_images.py computes, so that committed shards and previous runs made before are
# not taken for this path's. 1 (recorded as none): until 2026-12-02, torchvision's center_crop, a
# pixel off for odd margins; 2: the processor's crop and normalisation (a CPU's pixels equal pil's).
TENSOR_REVISION = 2


def pixels_path(preprocess: str, tensor_revision: int | None) -> str:
    """What a run's pixels are, for comparing runs: "pil", or "tensor rN" (a tensor run recorded
    without a revision made revision 1's)."""
    return "pil" if preprocess == "pil" else f"tensor r{tensor_revision or 1}"


@dataclass(frozen=True)
class Runtime:
    """How a worker actually runs: recorded in every shard and in the manifest."""

    device: str  # "cpu", "cuda", "cuda:1", ...
    # "pil" (the checkpoint's own processor) or "tensor" (batched decode + resize on the device; with
    # --large-model on each worker process's CPU, which sends the pixels to the shared model)
    preprocess: str
    precision: str  # "fp32", "bf16" or "fp16" (autocast; CUDA only)
    model_sharing: str  # "per_process" or "per_machine" (--large-model)
    tensor_revision: int | None = None  # TENSOR_REVISION on the tensor path; None: pil, or recorded before
    # the model process's thread share (pipelines/threads.py ThreadShare.as_dict()): recorded, never
    # compared, so a different machine or thread count does not make committed shards stale
    threads: dict | None = field(default=None, compare=False)

    def as_dict(self) -> dict:
        return asdict(self)

    def pixels(self) -> str:
        """`pixels_path` of this runtime: "pil" or "tensor rN"."""
        return pixels_path(self.preprocess, self.tensor_revision)

    def __str__(self) -> str:
        sharing = "one model per machine" if self.model_sharing == "per_machine" else "one model per process"
        threads = f", {self.threads['threads']} torch threads a process" if self.threads else ""
        return f"{self.device}, {self.preprocess} preprocessing, {self.precision}, {sharing}{threads}"


def resolve_preprocess(s: EmbedSettings, *, tensor_recipe: bool) -> str:
    """The preprocessing path `s` resolves to, "pil" or "tensor": the same on every device, so a
    driver knows it without knowing its workers' (the nightly comparison needs it). auto is the
    tensor path where the checkpoint has a tensor recipe (resize-short-side + center-crop), which on
    a CPU gives the reference processor's pixels (tests/test_preprocess_parity.py) for less CPU
    (docs/performance.md); pil without a recipe and with --large-model (its workers preprocess on
    their CPUs and send pixels). SettingsError for --preprocess tensor without a recipe."""
    if s.preprocess == "tensor" and not tensor_recipe:
        raise SettingsError(
            "--preprocess tensor: this model's image processor is not resize-short-side + center-crop; "
            "use --preprocess pil"
        )
    if s.preprocess != "auto":
        return s.preprocess
    return "tensor" if tensor_recipe and not s.large_model else "pil"


def resolve_runtime(s: EmbedSettings, *, cuda_available: bool, tensor_recipe: bool) -> Runtime:
    """The Runtime `s` resolves to on a machine; SettingsError when it cannot work there.

    `tensor_recipe`: whether the checkpoint's preprocessing is resize-short-side + center-crop.
    """
    device = s.device or ("cuda" if cuda_available else "cpu")
    on_cuda = device.startswith("cuda")
    if on_cuda and not cuda_available:
        raise SettingsError(f"--device {device}: torch sees no CUDA device on this machine; use --device cpu")
    preprocess = resolve_preprocess(s, tensor_recipe=tensor_recipe)
    if s.decode_ahead == "stream" and (not on_cuda or s.large_model):
        raise SettingsError(
            "--decode-ahead stream decodes on a second CUDA stream of the model's device; "
            + ("with --large-model the workers decode on their CPUs" if on_cuda else f"this run's device is {device}")
            + ": use --decode-ahead on"
        )
    precision = "fp32"
    if on_cuda:
        precision = "bf16" if s.precision == "auto" else s.precision
    elif s.precision not in ("auto", "fp32"):
        log.warning("--precision %s applies on CUDA only; running fp32 on %s", s.precision, device)
    sharing = "per_machine" if s.large_model else "per_process"
    return Runtime(device, preprocess, precision, sharing, TENSOR_REVISION if preprocess == "tensor" else None)


GPU_MIN_BATCH = 256  # below it a CUDA run is bound by the forward passes' Python (docs/performance.md)


def small_batch_warning(runtime: Runtime, batch_size: int) -> str | None:
    """What to tell the user when a CUDA run's batches are too small to keep the GPU busy: each
    model call costs the same host time (the towers' Python, about a millisecond a layer here)
    whatever its rows; None when that is not the case."""
    if not runtime.device.startswith("cuda") or batch_size >= GPU_MIN_BATCH:
        return None
    return (
        f"--batch-size {batch_size} on {runtime.device}: every model call costs the same host time whatever "
        f"its rows, so small batches leave the GPU waiting; use --batch-size {GPU_MIN_BATCH} or more"
    )


def shared_model_tag(s: EmbedSettings, model_fp: str) -> str:
    """The identity of a model loaded once per worker (Beam's Shared / MultiProcessShared tag):
    weights, device, precision, and --exact-shapes, which the loaded towers carry (their fixed rows)."""
    fixed = s.batch_size if s.exact_shapes else None
    return hashlib.sha256(f"{s.model}|{s.device}|{s.precision}|{model_fp}|{fixed}".encode()).hexdigest()[:16]

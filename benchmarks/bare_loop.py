"""The bare loop as a user would write it, run as a program of its own (the benchmark times it from
process start to exit, as it times `fusionindex embed`): read Parquet, PIL-decode, the checkpoint's
processor, forward both towers, with the libraries' own defaults (no thread or OpenMP settings).

    python -m benchmarks.bare_loop --model DIR --batch-size 32 [--device cpu] [--t0 EPOCH_S] FILE...

Prints one JSON line: rows, seconds (the loop, model load excluded), rows_per_s, and with --t0
(the parent's time.time() when it started this process) first_batch_s, the time from that start
to the end of the first batch (imports and model load included).
"""

import argparse
import io
import json
import time

import pyarrow.parquet as pq
import torch
from PIL import Image
from transformers import CLIPModel, CLIPProcessor


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--t0", type=float, default=None)
    ap.add_argument("files", nargs="+")
    a = ap.parse_args()
    device = a.device
    model = CLIPModel.from_pretrained(a.model).eval().to(device)
    processor = CLIPProcessor.from_pretrained(a.model)
    rows, first = 0, None
    t0 = time.perf_counter()
    for f in a.files:
        pf = pq.ParquetFile(f)
        for rg in range(pf.metadata.num_row_groups):
            t = pf.read_row_group(rg, columns=["key", "caption", "jpg"])
            images, captions = t.column("jpg").to_pylist(), t.column("caption").to_pylist()
            for s in range(0, len(images), a.batch_size):
                pics = [Image.open(io.BytesIO(b)) for b in images[s : s + a.batch_size]]
                inputs = processor(
                    text=captions[s : s + a.batch_size],
                    images=pics,
                    return_tensors="pt",
                    padding=True,
                    truncation=True,
                    max_length=77,
                ).to(device)
                with (
                    torch.inference_mode(),
                    torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")),
                ):
                    img = model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output
                    txt = model.get_text_features(
                        input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
                    ).pooler_output
                    torch.nn.functional.normalize(img, dim=-1), torch.nn.functional.normalize(txt, dim=-1)
                rows += len(pics)
                if first is None and a.t0 is not None:
                    first = time.time() - a.t0
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    out = {"rows": rows, "seconds": round(seconds, 2), "rows_per_s": round(rows / seconds, 1)}
    if first is not None:
        out["first_batch_s"] = round(first, 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()

"""The nightly reindex end to end through the CLI: three nights on real rows (a full night, a night
of changes, a broken feed), gates and exit codes, the atomic publish, the lock, retention, TOML."""

from __future__ import annotations

import html
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from index_builder.embeddings import arrow_to_vectors, list_shards
from index_builder.search import LoadedIndex
from pipelines.cli import main
from pipelines.datasets import img2dataset
from pipelines.datasets.sample import make_sample
from pipelines.reindex.root import Latest, run_ids, run_path
from tests.test_incremental import night_two, rows_of

pytestmark = [pytest.mark.beam]

CANARIES = "a red circle\na blue square on a white background\na green ring\nyellow triangle\n"


def vectors(run: str) -> dict[str, bytes]:
    table = pq.read_table(os.path.dirname(list_shards(run)[0].path))
    fused = arrow_to_vectors(table.column("fused_embedding"))[0]
    return {i: fused[k].tobytes() for k, i in enumerate(table.column("id").to_pylist())}


def broken_feed(night: str, out: str, share: float = 0.5) -> None:
    """`night` with every other image replaced by an HTML error page (a feed gone wrong)."""
    os.makedirs(out)
    for name in sorted(os.listdir(night)):
        fmt = "jpg" if "jpg" in pq.read_schema(os.path.join(night, name)).names else "png"
        rows = pq.read_table(os.path.join(night, name)).to_pylist()
        for i, r in enumerate(rows):
            if r["status"] == "success" and i % round(1 / share) == 0:
                r[fmt] = b"<html><body>503 Service Unavailable</body></html>"
        img2dataset.write(os.path.join(out, name), rows, fmt, extra=("query",), row_group_size=12)


def reindex(root, model, night, *extra) -> int:
    return main(["-q", "reindex", "--input", night, "--root", root, "--model", model, "--batch-size", "8",
                 "--report-queries", "2", *extra])  # fmt: skip


@pytest.fixture(scope="module")
def three_nights(tmp_path_factory, tiny_clip):
    base = tmp_path_factory.mktemp("nightly")
    make_sample(str(base / "night1"), rows=60, shards=2, failed_per_shard=2, seed=4, row_group_size=12)
    expect = night_two(str(base / "night1"), str(base / "night2"))
    broken_feed(str(base / "night2"), str(base / "night3"))
    (base / "canaries.txt").write_text(CANARIES)
    root, runs, codes = str(base / "root"), [], []
    for night in ("night1", "night2", "night3"):
        codes.append(reindex(root, tiny_clip, str(base / night), "--canary-queries", str(base / "canaries.txt")))
        runs.append(run_ids(root)[-1])
    return base, root, runs, codes, expect


def run_json(root, run_id):
    return json.load(open(os.path.join(run_path(root, run_id), "run.json")))


def test_night_one_embeds_everything_and_publishes(three_nights):
    base, root, runs, codes, expect = three_nights
    assert codes[0] == 0
    r = run_json(root, runs[0])
    assert r["status"] == "published" and r["previous"] is None
    assert r["counts"]["new"] == r["counts"]["embedded"] == 56 and r["counts"]["deleted"] == 0
    assert r["index"]["training"]["mode"] == "trained" and r["canary"]["skipped"].startswith("no published run")


def test_night_two_counts_changes_exactly_and_copies_unchanged_vectors(three_nights):
    base, root, runs, codes, expect = three_nights
    assert codes[1] == 0
    r = run_json(root, runs[1])
    assert r["previous"] == runs[0] and r["status"] == "published"
    assert {k: r["counts"][k] for k in ("new", "changed", "unchanged", "deleted", "rejected")} == {
        **{k: len(v) for k, v in expect.items()},
        "rejected": 0,
    }
    one, two = vectors(run_path(root, runs[0])), vectors(run_path(root, runs[1]))
    assert all(two[i] == one[i] for i in expect["unchanged"])
    today = {k for k, row in rows_of(str(base / "night2")).items() if row["status"] == "success"}
    index = LoadedIndex.load(os.path.join(run_path(root, runs[1]), "index"))
    assert sorted(index.ids) == sorted(today) and index.index.ntotal == len(today)
    assert r["index"]["training"]["mode"] == "reused"
    assert r["canary"]["queries"] == 4 and r["gates"][-1]["name"] == "canary_overlap" and r["gates"][-1]["passed"]
    assert set(r["stages"]) == {"embed", "index", "gates", "report"} and r["stages"]["embed"]["rows_per_s"] > 0


def test_a_broken_feed_fails_a_gate_exits_3_and_leaves_latest(three_nights, capsys):
    base, root, runs, codes, expect = three_nights
    assert codes[2] == 3
    r = run_json(root, runs[2])
    assert r["status"] == "rejected" and r["failed_gates"] == ["reject_rate", "canary_overlap"]  # half the items gone
    gate = next(g for g in r["gates"] if g["name"] == "reject_rate")
    assert gate["value"] > 0.4 and gate["limit"] == "<= 0.05" and "not_an_image" in gate["detail"]
    assert Latest.load(root).run == f"runs/{runs[1]}"
    assert Latest.index_of(root) == os.path.join(run_path(root, runs[1]), "index")
    capsys.readouterr()
    assert main(["-q", "search", "--index", root, "--text", "a green ring", "--k", "3", "--json"]) == 0
    hits = [json.loads(line)["id"] for line in capsys.readouterr().out.splitlines()]
    assert len(hits) == 3 and set(hits) <= set(LoadedIndex.load(Latest.index_of(root)).ids)
    report = json.load(open(os.path.join(run_path(root, runs[2]), "report.json")))
    assert report["failed_gates"] == r["failed_gates"] and report["reject_examples"]["not_an_image"]
    html = open(os.path.join(run_path(root, runs[2]), "report.html")).read()
    assert "reject_rate" in html and "FAIL" in html and "rejected" in html


def test_the_same_input_again_is_nothing_to_do(three_nights, tiny_clip):
    base, root, runs, codes, expect = three_nights
    before = run_ids(root)
    assert reindex(root, tiny_clip, str(base / "night2"), "--canary-queries", str(base / "canaries.txt")) == 0
    assert run_ids(root) == before and Latest.load(root).run == f"runs/{runs[1]}"


def test_a_running_reindex_holds_the_root(three_nights, tiny_clip, capsys):
    base, root, runs, codes, expect = three_nights
    lock = os.path.join(root, ".lock")
    record = {"host": socket.gethostname(), "pid": os.getpid(), "token": "x", "run": "other", "heartbeat": time.time()}
    with open(lock, "w") as fh:
        json.dump(record, fh)
    try:
        capsys.readouterr()
        assert reindex(root, tiny_clip, str(base / "night1")) == 2
        assert "another reindex (run other" in capsys.readouterr().err
    finally:
        os.remove(lock)


def test_keep_prunes_old_runs_never_the_published_one(tmp_path, tiny_clip):
    make_sample(str(tmp_path / "n1"), rows=24, shards=1, seed=1)
    make_sample(str(tmp_path / "n2"), rows=26, shards=1, seed=1)
    broken_feed(str(tmp_path / "n2"), str(tmp_path / "n3"))
    root = str(tmp_path / "root")
    assert reindex(root, tiny_clip, str(tmp_path / "n1"), "--keep", "1") == 0
    assert reindex(root, tiny_clip, str(tmp_path / "n2"), "--keep", "1") == 0
    published = run_ids(root)
    assert len(published) == 1 and Latest.load(root).run == f"runs/{published[0]}"
    assert reindex(root, tiny_clip, str(tmp_path / "n3"), "--keep", "1") == 3
    assert run_ids(root)[0] == published[0] and len(run_ids(root)) == 2  # the rejected run stays to be read


def test_toml_config_with_flags_overriding_it(tmp_path, tiny_clip, capsys):
    make_sample(str(tmp_path / "in"), rows=30, shards=1, seed=2)
    config = tmp_path / "nightly.toml"
    config.write_text(f'input = ["{tmp_path / "in"}"]\nroot = "{tmp_path / "root"}"\nmodel = "{tiny_clip}"\n'
                      'batch-size = 4\nkeep = 3\nmax_reject_rate = 0.5\n[beam]\nrunner = "FnApiRunner"\n')  # fmt: skip
    assert main(["-q", "reindex", "--config", str(config), "--batch-size", "6"]) == 0
    r = run_json(str(tmp_path / "root"), run_ids(str(tmp_path / "root"))[0])
    assert r["settings"]["embed"]["batch_size"] == 6 and r["settings"]["keep"] == 3
    assert r["settings"]["max_reject_rate"] == 0.5
    config.write_text("bach-size = 4\n")
    capsys.readouterr()
    assert main(["-q", "reindex", "--config", str(config)]) == 2
    assert "unknown option 'bach-size'; did you mean batch-size?" in capsys.readouterr().err


def every_caption_changed(night: str, out: str) -> None:
    os.makedirs(out)
    for name in sorted(os.listdir(night)):
        fmt = "jpg" if "jpg" in pq.read_schema(os.path.join(night, name)).names else "png"
        rows = [
            {**r, "caption": (r["caption"] or "") + ", new season"}
            for r in pq.read_table(os.path.join(night, name)).to_pylist()
        ]
        img2dataset.write(os.path.join(out, name), rows, fmt, extra=("query",), row_group_size=10)


def shard_bytes(run: str) -> dict[str, bytes]:
    d = os.path.join(run, "embeddings")
    return {n: open(os.path.join(d, n), "rb").read() for n in sorted(os.listdir(d)) if n.startswith("part-")}


@pytest.mark.kill9
def test_kill_9_in_night_two_then_the_same_command_finishes_the_night(tmp_path):
    from encoders.random_models import make_random_clip

    model = str(make_random_clip(tmp_path / "slow-clip", image_size=96, patch_size=8, hidden_size=64, num_layers=4))
    make_sample(str(tmp_path / "n1"), rows=300, shards=2, seed=6, row_group_size=10)
    every_caption_changed(str(tmp_path / "n1"), str(tmp_path / "n2"))
    root, twin = str(tmp_path / "root"), str(tmp_path / "twin")
    assert reindex(root, model, str(tmp_path / "n1")) == 0
    shutil.copytree(root, twin)  # the same published night 1, for an uninterrupted night 2
    exe = os.path.join(os.path.dirname(sys.executable), "fusionindex")
    cmd = [exe, "-q", "reindex", "--input", str(tmp_path / "n2"), "--root", root, "--model", model, "--batch-size", "8",
           "--report-queries", "2"]  # fmt: skip
    proc = subprocess.Popen(cmd, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        runs = run_ids(root)
        shards = os.path.join(run_path(root, runs[-1]), "embeddings") if len(runs) == 2 else None
        if shards and os.path.isdir(shards) and sum(n.startswith("part-") for n in os.listdir(shards)) >= 3:
            break
        time.sleep(0.01)
    assert proc.poll() is None, f"night 2 ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed = run_ids(root)[-1]
    committed = shard_bytes(run_path(root, killed))
    assert 3 <= len(committed) < 30 and os.path.exists(os.path.join(root, ".lock"))  # the dead run's lock is left
    assert Latest.load(root).run != f"runs/{killed}"

    assert reindex(root, model, str(tmp_path / "n2")) == 0  # takes over the dead lock and resumes the run
    assert run_ids(root)[-1] == killed and Latest.load(root).run == f"runs/{killed}"
    resumed = shard_bytes(run_path(root, killed))
    assert all(resumed[n] == b for n, b in committed.items())  # committed shards were reused, not redone
    assert reindex(twin, model, str(tmp_path / "n2")) == 0
    assert shard_bytes(run_path(twin, run_ids(twin)[-1])) == resumed  # the same night, byte for byte
    a, b = run_json(root, killed), run_json(twin, run_ids(twin)[-1])
    assert a["counts"] == b["counts"] and a["counts"]["changed"] == a["counts"]["embedded"] == 296


@pytest.fixture
def s3(monkeypatch, tmp_path):
    """An S3 endpoint on localhost (moto's server mode, as s3fs tests itself) with a bucket; fsspec's
    s3 filesystem is pointed at it through its config, exactly as a user's endpoint would be."""
    import fsspec

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "moto_server"), "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}"
    for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
                       "FSSPEC_S3_ENDPOINT_URL": endpoint}.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": endpoint})
    fsspec.filesystem("s3").clear_instance_cache()
    try:
        for _ in range(100):  # the server takes a moment to listen
            try:
                fsspec.filesystem("s3", skip_instance_cache=True).mkdir("nightly")
                break
            except Exception:  # noqa: BLE001 - any connection error means "not up yet"
                time.sleep(0.1)
        yield fsspec.filesystem("s3")
    finally:
        server.terminate()
        server.wait()
        fsspec.filesystem("s3").clear_instance_cache()


@pytest.mark.s3
def test_the_three_nights_with_input_and_root_on_s3(s3, three_nights, tiny_clip, capsys):
    base, local_root, local_runs, local_codes, expect = three_nights
    for night in ("night1", "night2", "night3"):
        s3.put(str(base / night), f"nightly/{night}", recursive=True)
    s3.put(str(base / "canaries.txt"), "nightly/canaries.txt")
    root, codes, runs = "s3://nightly/root", [], []
    for night in ("night1", "night2", "night3"):
        codes.append(reindex(root, tiny_clip, f"s3://nightly/{night}", "--canary-queries", "s3://nightly/canaries.txt"))
        runs.append(run_ids(root)[-1])
    assert codes == local_codes == [0, 0, 3]
    from encoders import storage

    for ours, theirs in zip(runs, local_runs):
        remote, local = storage.read_json(f"{root}/runs/{ours}/run.json"), run_json(local_root, theirs)
        assert remote["counts"] == local["counts"] and remote["failed_gates"] == local["failed_gates"]
    assert Latest.load(root).run == f"runs/{runs[1]}" and not s3.exists("nightly/root/.lock")
    assert not [p for p in s3.find("nightly/root") if "/.tmp-" in p]  # no temporary left behind
    capsys.readouterr()
    assert main(["-q", "search", "--index", root, "--text", "a green ring", "--k", "2"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2


CHECK = """<script>
window.addEventListener("load", () => {
  const images = [...document.images];
  const plot = document.getElementById("recall-plot");
  const box = plot ? plot.getBoundingClientRect() : {width: 0, height: 0};
  document.body.setAttribute("data-check", JSON.stringify({
    images: images.length, loaded: images.filter(i => i.complete && i.naturalWidth > 0).length,
    plot: [Math.round(box.width), Math.round(box.height)], points: plot ? plot.querySelectorAll("circle").length : 0,
    text: document.body.innerText.length}));
});
</script>"""


@pytest.mark.browser
@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium: apt-get install -y chromium")
def test_the_report_renders_in_a_real_browser_with_every_image_and_the_plot(tmp_path, tiny_clip):
    make_sample(str(tmp_path / "in"), rows=80, shards=2, seed=3, row_group_size=20)
    root = str(tmp_path / "root")
    assert reindex(root, tiny_clip, str(tmp_path / "in"), "--factory", "IVF8,Flat", "--report-queries", "3") == 0
    page = open(os.path.join(Latest.index_of(root), os.pardir, "report.html")).read()
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", CHECK + "</body>"))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-sync",
             "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}"]  # fmt: skip
    dom = subprocess.run(["chromium", *flags, "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout  # fmt: skip
    check = json.loads(html.unescape(dom.split('data-check="', 1)[1].split('"', 1)[0]))
    assert check["images"] == 15 and check["loaded"] == 15  # 3 queries x 5 results, every thumbnail decoded
    measured = json.load(open(os.path.join(Latest.index_of(root), os.pardir, "report.json")))["recall_by_nprobe"]
    assert len(measured) >= 3  # nprobe 1, 2, 4 at least (two steps past the target), any bisection adds
    assert check["plot"][0] > 300 and check["plot"][1] > 150 and check["points"] == len(measured)
    assert check["text"] > 500
    shot = tmp_path / "report.png"
    subprocess.run(["chromium", *flags, "--window-size=1000,1400", f"--screenshot={shot}", probe.as_uri()],
                   capture_output=True, timeout=120, check=True)  # fmt: skip
    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.shape == (1400, 1000) and (pixels < 128).mean() > 0.01  # not a blank page


def test_a_pq_template_is_reused_when_few_rows_change_and_its_baseline_is_held_out(tmp_path, tiny_clip):
    """The drift test compares the codec's error on today's computed vectors with its error on
    vectors held out of training: a template that memorised a small catalogue is not 'drifted'."""
    make_sample(str(tmp_path / "n1"), rows=400, shards=2, seed=8, row_group_size=50)
    # the same generator with more rows: shard 0 keeps its rows and gains 20, shard 1's rows change
    make_sample(str(tmp_path / "n2"), rows=440, shards=2, seed=8, row_group_size=50)
    root = str(tmp_path / "root")
    for night in ("n1", "n2"):
        assert reindex(root, tiny_clip, str(tmp_path / night), "--factory", "IVF8,PQ4x4np", "--min-recall", "0") == 0
    one, two = (run_json(root, r)["index"]["training"] for r in run_ids(root))
    assert one["mode"] == "trained" and two["mode"] == "reused" and two["reason"].startswith("no drift:"), two
    first = json.load(open(os.path.join(run_path(root, run_ids(root)[0]), "index", "manifest.json")))
    assert first["training"]["baseline_on"] == "39 held-out vectors"  # a tenth of 396 rows

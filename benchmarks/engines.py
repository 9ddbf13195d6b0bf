"""The engines side by side on the same rows: Beam in one process, Beam with 2 worker processes,
Spark local[2] and local-cluster[2,1,1024]; each `fusionindex embed` a process timed from start
to exit, with the CPU seconds of its whole process tree (the JVMs, Python daemons and workers
Spark starts are not all reaped by the driver, so wait4 alone misses them: /proc is sampled).

    python -m benchmarks.bench --sections engines [--engines-rows 2048] [--repeat 2] [--engines-runs beam,beam-w2]
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")
RUNS = {  # name -> embed arguments beyond the common ones
    "beam": (),
    "beam-w2": ("--direct_num_workers", "2", "--direct_running_mode", "multi_processing"),
    "spark-local2": ("--engine", "spark", "--spark-master", "local[2]"),
    "spark-cluster": ("--engine", "spark", "--spark-master", "local-cluster[2,1,1024]"),
}


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            kids.setdefault(ppid, []).append(int(name))
    return kids


def _cpu_s(pid: int) -> float:
    """utime + stime of `pid` itself (not its reaped children, which are sampled on their own), in seconds."""
    with open(f"/proc/{pid}/stat") as fh:
        f = fh.read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / TICKS


def tree_cpu(cmd: list[str], env: dict[str, str], period: float = 0.2) -> dict:
    """Run `cmd`; its wall seconds and the CPU seconds of every process it started (each one's own,
    sampled every `period`: up to `period` of a process's last CPU time may be missed)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seen: dict[int, float] = {}
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(period):
            kids, todo = _children(), [proc.pid]
            while todo:
                pid = todo.pop()
                todo += kids.get(pid, [])
                try:
                    seen[pid] = _cpu_s(pid)
                except (OSError, ValueError, IndexError):
                    pass

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, err = proc.communicate()
    wall = time.perf_counter() - t0
    stop.set()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {err.decode()[-2000:]}")
    return {"wall_s": round(wall, 2), "cpu_s": round(sum(seen.values()), 1), "processes": len(seen)}


def bench_engines(work: Path, args, fusionindex, make_inputs) -> dict:
    """Each engine `--repeat` times, alternated, on the same input and model (see the module doc)."""
    model, inp = make_inputs(work, args.engines_rows)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    chosen = ["beam"] + [n for n in (args.engines_runs or ",".join(RUNS)).split(",") if n != "beam"]
    unknown = [n for n in chosen if n not in RUNS]
    if unknown:
        raise SystemExit(f"--engines-runs: unknown {unknown}; choose among {', '.join(RUNS)}")
    out: dict[str, dict] = {name: {"runs": []} for name in chosen}
    for _ in range(args.repeat):
        for name in chosen:
            extra = RUNS[name]
            dest = work / f"engines-{name}"
            cmd = fusionindex("embed", "--input", str(inp), "--output", str(dest), "--model", model,
                              "--batch-size", str(args.batch_size), "--restart", *extra)  # fmt: skip
            r = tree_cpu(cmd, env)
            m = json.loads((dest / "manifest.json").read_text())
            r.update(units_s=m["timings"]["units_s"], engine=m["engine"], runner=m["runner"])
            r["threads"] = (m["runtime"] or {}).get("threads") if isinstance(m["runtime"], dict) else None
            out[name]["runs"].append(r)
    base = min(r["wall_s"] for r in out["beam"]["runs"])
    for o in out.values():
        o["best_wall_s"] = min(r["wall_s"] for r in o["runs"])
        o["best_cpu_s"] = min(r["cpu_s"] for r in o["runs"])
        o["speed_vs_beam"] = round(base / o["best_wall_s"], 3)  # >= 0.8 is the target for local[2]
    return {"rows": args.engines_rows, "model": args.model, "batch_size": args.batch_size, "engines": out}


def table(e: dict) -> list[str]:
    lines = [f"engines ({e['rows']} JPEGs, {e['model']} model, batch {e['batch_size']}; wall incl. start-up, "
             "CPU s of the whole process tree; speed = Beam-in-one-process wall / this wall):"]  # fmt: skip
    for name, o in e["engines"].items():
        runs = ", ".join(f"{r['wall_s']} s / {r['cpu_s']} CPU s" for r in o["runs"])
        th = o["runs"][-1].get("threads") or {}
        lines.append(f"  {name:<14} speed {o['speed_vs_beam']:<6} ({runs}); {th.get('threads')} torch threads x "
                     f"{th.get('processes')} processes")  # fmt: skip
    return lines

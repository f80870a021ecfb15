"""How long a new user's first run takes: `make demo` on a fresh clone, install included.

    python benchmarks/demo.py [--runs 2] [--repo .] [--out benchmarks/results/demo.md]

Each run clones the repository into a new temporary folder (no `.venv`), runs `make demo` there
under `/usr/bin/time`, and records the wall time, the CPU time (user + sys: the demo trains on
one thread, so on an idle machine its wall time is about its CPU time), the load average before
and after (above about 0.5 per core: other jobs shared the machine, and the wall time is an upper
bound), and the demo's closing figures (its exported models' final IoU against the paired
baseline). Results are appended to `benchmarks/results/demo.json`; the Markdown page lists them all.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from _common import cpu_name, md_table

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
TIME_FORMAT = "TIMING wall=%e user=%U sys=%S"


def load() -> float:
    return os.getloadavg()[0]


def exported_models(clone: Path) -> list[dict[str, float]]:
    """Each exported model's GFLOPs, final IoU and paired baseline IoU (its metrics.json)."""
    rows = []
    for path in sorted((clone / "runs" / "demo" / "exported").glob("trial_*/metrics.json")):
        m = json.loads(path.read_text())
        final, paired = m.get("final_iou", m.get("iou")), m.get("paired_baseline_iou")
        rows.append({"trial": int(path.parent.name.split("_")[-1]), "gflops": m["gflops"],
                     "final_iou": final, "paired_baseline_iou": paired,
                     "ratio": final / paired if final is not None and paired else None})
    return rows


def one_run(repo: Path) -> dict:
    with tempfile.TemporaryDirectory(prefix="cubesearch-demo-") as tmp:
        clone = Path(tmp) / "clone"
        subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
        commit = subprocess.run(["git", "-C", str(clone), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, check=True).stdout.strip()
        env = {k: v for k, v in os.environ.items()
               if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUBESEARCH_THREADS")}
        env["COLUMNS"] = "200"
        before, start = load(), time.time()
        proc = subprocess.run(["/usr/bin/time", "-f", TIME_FORMAT, "make", "demo"], cwd=clone,
                              env=env, capture_output=True, text=True)
        log = proc.stdout + proc.stderr
        timing = re.search(r"TIMING wall=([\d.]+) user=([\d.]+) sys=([\d.]+)", log)
        return {"commit": commit, "returncode": proc.returncode, "started": time.strftime(
            "%Y-%m-%d %H:%M", time.gmtime(start)), "load_before": round(before, 2),
            "load_after": round(load(), 2), "wall_s": float(timing[1]) if timing else None,
            "cpu_s": float(timing[2]) + float(timing[3]) if timing else None,
            "models": exported_models(clone), "log_tail": log[-1500:]}


def summary(runs: list[dict]) -> dict:
    """The runs, and the medians the docs quote."""
    done = [r for r in runs if r["returncode"] == 0 and r["wall_s"]]
    return {"runs": runs, "n_runs": len(done),
            "median_wall_min": statistics.median(r["wall_s"] for r in done) / 60 if done else None,
            "median_cpu_min": statistics.median(r["cpu_s"] for r in done) / 60 if done else None,
            "max_load": max((r["load_after"] for r in done), default=None)}


def render(runs: list[dict]) -> str:
    rows = [[r["started"], r["commit"], f"{r['wall_s'] / 60:.1f}" if r["wall_s"] else "–",
             f"{r['cpu_s'] / 60:.1f}" if r["cpu_s"] else "–",
             f"{r['load_before']:.1f} → {r['load_after']:.1f}",
             str(r["returncode"]),
             ", ".join(f"{m['gflops']:.2f} GF: {m['ratio']:.3f}×" for m in r["models"] if m["ratio"]) or "–"]
             for r in runs]
    return "\n".join([
        "# `make demo` on a fresh clone, install included",
        "",
        f"`python benchmarks/demo.py`: each run clones the repository (no `.venv`) and runs `make demo` "
        f"on {cpu_name()}, {os.cpu_count()} cores. The demo trains on one thread (`--threads auto`: "
        "cores − 1), so its CPU time is about what its wall time is on an idle machine; a load "
        "average above about 1 means other jobs shared the cores and the wall time is an upper bound.",
        "",
        md_table(["started (UTC)", "commit", "wall (min)", "CPU (min)", "load 1-min", "exit",
                  "exported models: GFLOPs, final IoU / paired baseline"], rows),
        ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--repo", default=str(HERE.parent))
    parser.add_argument("--out", default=str(RESULTS / "demo.md"))
    args = parser.parse_args()
    store = Path(args.out).with_suffix(".json")
    runs = json.loads(store.read_text())["runs"] if store.exists() else []
    for _ in range(args.runs):
        runs.append(one_run(Path(args.repo)))
        store.write_text(json.dumps(summary(runs), indent=2) + "\n")
        Path(args.out).write_text(render(runs))
        print(render(runs))


if __name__ == "__main__":
    main()

"""Ray backend benchmark: the same N trials with 1 and 2 concurrent trials on Ray, and the local
backend, for the overhead per trial.

Each configuration is a real `cubesearch search` process (the CLI, `--json`) with its own --out
folder, on the same model, space, budget (100%: every plan is trained, so every run trains N
models), sampler and seed:

- `local`: the Optuna loop in the process (one trial at a time);
- `ray ×1`, `ray ×2`: `--backend ray --max-concurrent 1|2` on a local Ray instance sized to the
  machine (started by the command, as a user would run it).

Figures, from the process and from the study each run leaves:
- wall: the whole command (Python start, Ray start, baseline training, trials, summary);
- loop: first trial's start to last trial's end (the study's timestamps): the search itself;
- train: mean seconds `evaluate_plan` took per trial (its `seconds` attribute, on the worker);
- overhead/trial: mean of (trial's end − start − train): scheduling, actor start, the context
  from the object store, telling the study. With 2 trials at once this includes waiting for the
  machine's cores, so compare `local` and `ray ×1`.

Run: `nice -n 10 python benchmarks/search_ray.py [--trials 8] [--model tests/assets/tiny_seg.py]`;
writes benchmarks/results/search_ray.md (and prints it). On a machine shared with others, the
figures move with their load; the table says how many CPUs this one had.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import machine  # benchmarks/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TINY = "tests/assets/tiny_seg.py"


def run(label: str, out: Path, args: argparse.Namespace, extra: list[str]) -> dict:
    import optuna
    from optuna.trial import TrialState

    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "cubesearch", "search", args.model, "--budget", "100%",
           "--space", "shared", "--trials", str(args.trials), "--sampler", "random", "--strategy", "trials",
           "--seed", "0", "--input-size", args.input_size, "--tile-size", str(args.tile_size),
           "--train-tiles", str(args.train_tiles), "--val-tiles", str(args.val_tiles),
           "--epochs-per-trial", str(args.epochs), "--out", str(out), "--json", *extra]
    # one thread per trial everywhere: a Ray trial with 1 CPU trains on one thread, and so does
    # the local process here (torch would otherwise use every core, and fight other work for them)
    env = {**os.environ, "CUBESEARCH_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"{label} failed:\n{res.stderr[-3000:]}")
    report = json.loads(res.stdout)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=report["study"], storage=report["storage"])
    trials = [t for t in study.get_trials(states=(TrialState.COMPLETE,)) if "seconds" in t.user_attrs]
    spans = [(t.datetime_complete - t.datetime_start).total_seconds() for t in trials]
    train = [float(t.user_attrs["seconds"]) for t in trials]
    loop = (max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)
            ).total_seconds()
    return {"label": label, "trials": len(trials), "wall": wall, "loop": loop,
            "per_hour": 3600 * len(trials) / loop, "train": statistics.mean(train),
            "overhead": statistics.mean(s - t for s, t in zip(spans, train, strict=True))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=TINY)
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--input-size", default="3x64x64")
    p.add_argument("--tile-size", type=int, default=64)
    p.add_argument("--train-tiles", type=int, default=64)
    p.add_argument("--val-tiles", type=int, default=16)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--work", default="/tmp/cubesearch-bench-ray")
    args = p.parse_args()
    work = Path(args.work)
    load_before = os.getloadavg()[0]
    rows = [run("local", work / "local", args, []),
            run("ray ×1", work / "ray1", args, ["--backend", "ray", "--max-concurrent", "1"]),
            run("ray ×2", work / "ray2", args, ["--backend", "ray", "--max-concurrent", "2"])]
    local, ray1, ray2 = rows
    load = (load_before + os.getloadavg()[0]) / 2
    lines = [
        "# Ray backend: 1 and 2 concurrent trials, and the overhead per trial",
        "",
        f"`python benchmarks/search_ray.py --trials {args.trials}`: model `{args.model}`, space "
        f"`shared`, budget 100% (every plan trained), random sampler, seed 0, input "
        f"{args.input_size}, {args.train_tiles} training tiles of {args.tile_size}², "
        f"{args.epochs:g} epoch per trial. Machine: {machine()}; Ray: a local "
        "instance started by the command, 1 CPU per trial; every run trains on one thread per "
        f"trial (`OMP_NUM_THREADS=1`). Load average during the runs: about {load:.1f}.",
        "",
        "| run | trials | wall (s) | loop (s) | trials/h | train/trial (s) | overhead/trial (s) |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *[f"| {r['label']} | {r['trials']} | {r['wall']:.1f} | {r['loop']:.1f} | {r['per_hour']:.0f} "
          f"| {r['train']:.2f} | {r['overhead']:.2f} |" for r in rows],
        "",
        f"- Speed-up of the search loop with 2 concurrent trials: {ray1['loop'] / ray2['loop']:.2f}× "
        "(ray ×1 loop / ray ×2 loop).",
        f"- Ray's overhead per trial against the local backend (ray ×1 − local): "
        f"{ray1['overhead'] - local['overhead']:+.2f} s; whole command: "
        f"{ray1['wall'] - local['wall']:+.1f} s (Ray's start and shutdown included).",
        "- wall: the whole command; loop: first trial's start to last trial's end; train: "
        "`evaluate_plan` per trial on the worker; overhead: a trial's span minus its training "
        "(scheduling, worker start, the shared context from the object store, recording).",
        "- With more load than cores, two concurrent trials share the cores others leave free: "
        "compare train/trial of ray ×2 and ray ×1 to see how much of a core each trial had.",
    ]
    text = "\n".join(lines) + "\n"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "search_ray.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()

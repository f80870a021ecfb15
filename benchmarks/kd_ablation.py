"""Does distillation from the search's baseline help the final recipe, or cap it? (issue 23)

The final recipe (`cubesearch.training.finetune.Recipe`) distils the logits of the trained,
unconverted baseline into the model it trains. In the demo's setting that teacher is a 12-epoch
model at IoU ≈ 0.46, weaker than what its students reach, so KD may hold them back. This trains
the unconverted model and FullCube by the recipe with `kd_weight 0` under the seeds
`benchmarks/fidelity.py` trained them with KD (same epochs, data, seeds, no early stopping), and
sets the two side by side: each plan's IoU with and without KD, and FullCube's ratio to its
paired baseline either way.

    python benchmarks/kd_ablation.py            # resumable: one JSON a run under --cache
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import _plans  # noqa: E402
import fidelity  # noqa: E402  (benchmarks/ on sys.path: the plans, context and runs are shared)
import torch  # noqa: E402
from _common import machine, md_table  # noqa: E402

from cubesearch.training.finetune import Recipe  # noqa: E402

PLANS = (0, 1)  # fidelity.choose's order: the unconverted model, FullCube


def kd_runs(args: argparse.Namespace) -> dict[tuple[int, int, float], dict[str, Any]]:
    """(plan, seed, kd_weight) → the run: KD 1 read from fidelity's cache, KD 0 trained here."""
    ctx = _plans.make_context(args)
    plans = fidelity.choose(ctx, args)
    with_kd = Path(args.fidelity_cache) / fidelity.tag(args)
    own = Path(args.cache)
    own.mkdir(parents=True, exist_ok=True)
    runs = {}
    for i in PLANS:
        label, sites = plans[i]
        for seed in range(args.seeds):
            runs[i, seed, 1.0] = json.loads((with_kd / f"plan{i:02d}-seed{seed}.json").read_text())
            file = own / f"plan{i:02d}-seed{seed}-kd0.json"
            if not file.exists():
                load0 = os.getloadavg()[0]
                recipe = Recipe(epochs=args.epochs, patience=None, kd_weight=0.0)
                row = {"plan": i, "label": label, "seed": seed, "kd_weight": 0.0,
                       **fidelity.converged(ctx, fidelity.plan_of(ctx, sites), seed, recipe),
                       "load_start": load0, "load_end": os.getloadavg()[0],
                       "threads": torch.get_num_threads()}
                _plans.write_json(file, row)
                print(f"[{time.strftime('%H:%M:%S')}] {label} seed {seed} without KD: IoU "
                      f"{row['iou']:.4f} in {row['converge_seconds']:.0f} s", flush=True)
            runs[i, seed, 0.0] = json.loads(file.read_text())
    return runs


def report(args: argparse.Namespace, runs: dict[tuple[int, int, float], dict[str, Any]]) -> dict:
    def mean(i: int, kd: float) -> float:
        return statistics.fmean(runs[i, s, kd]["iou"] for s in range(args.seeds))

    rows, fig = [], {"epochs": args.epochs, "seeds": args.seeds, "machine": machine(),
                     "plans": {}}
    for i in PLANS:
        label = runs[i, 0, 1.0]["label"]
        on, off = mean(i, 1.0), mean(i, 0.0)
        fig["plans"][label] = {"iou_kd": on, "iou_no_kd": off, "delta": on - off,
                               "curves_kd": [runs[i, s, 1.0]["curve"] for s in range(args.seeds)],
                               "curves_no_kd": [runs[i, s, 0.0]["curve"] for s in range(args.seeds)]}
        rows.append([label, f"{on:.4f}", f"{off:.4f}", f"{on - off:+.4f}",
                     " / ".join(f"{runs[i, s, 0.0]['iou']:.4f}" for s in range(args.seeds))])
    fig["fullcube_ratio_kd"] = mean(1, 1.0) / mean(0, 1.0)
    fig["fullcube_ratio_no_kd"] = mean(1, 0.0) / mean(0, 0.0)
    md = ["# Distillation in the final recipe: on and off (issue 23)", "",
          f"Demo setting (smp:Unet:resnet18, 64×64 synthetic tiles, 384 training / "
          f"{args.val_tiles} validation, the 12-epoch baseline as teacher and warm start), "
          f"{args.epochs:g} epochs of the final recipe, no early stopping, best weights kept, "
          f"{args.seeds} seed(s). With KD: `benchmarks/fidelity.py`'s runs; without: "
          "`kd_weight 0`, everything else equal. Command: `python benchmarks/kd_ablation.py`.", "",
          md_table(["plan", "IoU with KD", "without KD", "Δ (KD − none)", "without KD, per seed"], rows),
          "",
          f"FullCube / unconverted (its paired baseline): {fig['fullcube_ratio_kd']:.3f}× with KD, "
          f"{fig['fullcube_ratio_no_kd']:.3f}× without.", "", f"Machine: {fig['machine']}.", ""]
    out = Path(args.results)
    (out / "kd-ablation.md").write_text("\n".join(md))
    (out / "kd-ablation.json").write_text(json.dumps(fig, indent=1))
    print("\n".join(md))
    return fig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smp:Unet:resnet18")
    ap.add_argument("--budget", default="70%")
    ap.add_argument("--plans", type=int, default=12, help="fidelity.py's --plans (its folder)")
    ap.add_argument("--pool", type=int, default=16)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=float, default=8.0)
    ap.add_argument("--patience", type=int, default=0)
    ap.add_argument("--val-tiles", type=int, default=192)
    ap.add_argument("--work", default="/tmp/cubesearch-oneshot")
    ap.add_argument("--fidelity-cache", default=str(fidelity.CACHE))
    ap.add_argument("--cache", default=str(fidelity.CACHE / "kd-ablation"))
    ap.add_argument("--results", default=str(fidelity.RESULTS))
    args = ap.parse_args()
    args.smoke, args.model_kwargs = False, {}
    report(args, kd_runs(args))


if __name__ == "__main__":
    main()

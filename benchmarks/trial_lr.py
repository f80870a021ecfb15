"""How a search trial should fine-tune: its learning rates, measured on the demo's setting.

A trial starts from the trained baseline's weights, its Cube blocks fitted to the convs they
replace by local distillation, and trains for a couple of epochs. This runs the real trial code
(`cubesearch.search.evaluate_plan`) on the same plans with three learning-rate recipes:

- `baseline lr`: everything peaks at the baseline's lr (2e-3), the search's old recipe;
- `lr / 4`: everything peaks at a quarter of it;
- `lr / 4, blocks at lr`: the weights taken from the baseline at lr / 4, the new blocks at lr
  (the search's default: `--trial-lr`, default lr / 4, and `--lr`).

Plans: the unconverted reference, the FullCube reference, and random plans of the default
space under the budget (seeded). Each plan trains with the same seed under every recipe, so the
columns compare like with like; the table reports validation IoU.

Run: `python benchmarks/trial_lr.py [--plans 3]`; writes benchmarks/results/trial-lr.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import machine, md_table  # noqa: E402

RECIPES = {  # name → (trial_lr, lr of the new blocks) as multiples of the baseline's lr
    "baseline lr": (1.0, 1.0),
    "lr / 4": (0.25, 0.25),
    "lr / 4, blocks at lr": (0.25, 1.0),
}


def random_plans(ctx, n: int, seed: int) -> list[dict]:
    import optuna

    from cubesearch.search import plan_cost

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.RandomSampler(seed=seed)
    study = optuna.create_study(sampler=sampler)
    plans: list[dict] = []
    while len(plans) < n:
        trial = study.ask()
        plan = ctx.space.sample_plan(trial, ctx.searchable)
        study.tell(trial, 0.0)
        if plan and plan_cost(ctx, plan)["flops"] <= ctx.budget_flops:
            plans.append(plan)
    return plans


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smp:Unet:resnet18")
    ap.add_argument("--budget", default="70%")
    ap.add_argument("--plans", type=int, default=3, help="random plans besides the two references")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="/tmp/cubesearch-bench-trial-lr")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "trial-lr.md"))
    args = ap.parse_args()

    from cubesearch.cli.demo import DEMO_TRAINING
    from cubesearch.search import SearchSettings, build_context, evaluate_plan
    from cubesearch.search.context import ensure_baseline, ensure_datasets

    t0 = time.perf_counter()
    settings = SearchSettings(model=args.model, budget=args.budget, out=args.work, seed=args.seed,
                              strategy="trials", **DEMO_TRAINING)
    ctx = build_context(settings)
    ensure_datasets(ctx)
    ensure_baseline(ctx, progress=False)
    plans = [("unconverted", {}),
             ("FullCube", {s.name: ctx.space.default_config() for s in ctx.searchable})]
    plans += [(f"random {i + 1}", p) for i, p in enumerate(random_plans(ctx, args.plans, args.seed))]
    rows, results = [], {}
    for number, (label, plan) in enumerate(plans):
        gflops = None
        row = []
        for recipe, (trial_mult, new_mult) in RECIPES.items():
            if not plan and recipe.endswith("blocks at lr"):
                row.append("= lr / 4")  # nothing new to train
                continue
            s = settings.model_copy(update={"trial_lr": settings.lr * trial_mult, "training":
                                            settings.training.model_copy(
                                                update={"lr": settings.lr * new_mult})})
            rctx = dataclasses.replace(ctx, settings=s, out=Path(args.work) / recipe.replace(" ", "_")
                                       .replace("/", "div").replace(",", ""))
            out = evaluate_plan(rctx, plan, number)
            gflops = out.costs["gflops"]
            if plan:
                results.setdefault(recipe, []).append(out.iou)
            row.append(f"{out.iou:.4f}")
            print(f"{label}: {recipe}: IoU {out.iou:.4f} ({out.seconds:.0f} s)", flush=True)
        rows.append([label, str(len(plan)), f"{gflops:.3f}", *row])
    means = []
    for recipe in RECIPES:
        vals = results.get(recipe, [])
        means.append(f"{sum(vals) / len(vals):.4f}" if vals else "–")
    rows.append(["mean over the converted plans", "", "", *means])
    text = "\n".join([
        "# Trial learning rate (`benchmarks/trial_lr.py`)",
        "",
        f"Machine: {machine()}. Took {(time.perf_counter() - t0) / 60:.1f} min. Command: "
        f"`python benchmarks/trial_lr.py --plans {args.plans} --seed {args.seed}`.",
        "",
        f"Model `{args.model}`, budget {args.budget}, the demo's settings: synthetic data, "
        f"{settings.train_tiles} training / {settings.val_tiles} validation tiles of "
        f"{settings.tile_size}², baseline {settings.baseline_epochs:g} epochs at lr "
        f"{settings.lr:g} (validation IoU {ctx.baseline_metrics['iou']:.4f}), then per trial "
        f"{settings.distill_steps} distillation batches and {settings.epochs_per_trial:g} epochs "
        "(Adam, 5% warmup, cosine), seed = plan index. Validation IoU after the trial:",
        "",
        md_table(["plan", "sites replaced", "GFLOPs", *RECIPES], rows),
        "",
    ])
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()

"""How well do the cheap signals rank *trained* models? (issue 23's calibration benchmark)

In the demo's setting (`smp:Unet:resnet18`, the default space, 70% budget, 64×64 synthetic tiles,
384/48 tiles, the demo's 12-epoch baseline) — or `--model examples/unet.py --model-arg width=32`
(results/fidelity-unet.*; the demo's are results/fidelity.*) — take plans
stratified over FLOPs (fixed seed; the unconverted model, FullCube and the decoder preset among
them) and train each, under ≥ 2 seeds, with the final recipe (`cubesearch.training.finetune`:
KD from the baseline, annealed to 0, best weights kept, early stopping). Against the mean
converged IoU, rank every cheap signal:

- `rung1`, `rung3`: the halving strategy's rungs, the val IoU after 1 and 3 epochs of the final
  recipe's schedule (a promoted trial continues where it stopped, as in ASHA);
- `tse3`: the sum of training losses over those 3 epochs (Ru et al. 2021; lower is better);
- `trial2`: today's 2-epoch search trial (the search's `evaluate_plan`);
- `supernet`: the retired one-shot supernet's score, read from stored results only
  (results/oneshot.json when its plans match, or a stored CACHE/TAG/supernet.json): a historical
  column (the strategy was retired for ranking worst, issue 31).

Plus one reference a user would pick instead: structured channel pruning (Torch-Pruning, L1
magnitude, uniform per layer, the class head kept) of the unconverted model at FullCube's FLOPs,
trained by the same recipe.

Phases (each resumable; one JSON a finished run under `--cache`, kept in the repository so that
a later session resumes where this one stopped; workers split the runs by claim files):

    python benchmarks/fidelity.py --phase runs --worker 0/2 &   # converged + rungs
    python benchmarks/fidelity.py --phase runs --worker 1/2 &
    python benchmarks/fidelity.py --phase report                # results/fidelity.{md,json,png}
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import _plans  # noqa: E402  (benchmarks/ on sys.path: the plan choice and context are shared)
import fidelity_stats  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import machine, md_table  # noqa: E402
from _stats import FLAT_DELTA, FLAT_WINDOW, flattened  # noqa: E402

from cubesearch.cli.options import model_args  # noqa: E402  (the CLI's --model-arg parser)
from cubesearch.exporting.calibration import kendall_tau, spearman_rho  # noqa: E402
from cubesearch.plan.checkpoint import load  # noqa: E402
from cubesearch.plan.plan import Plan, select_sites  # noqa: E402
from cubesearch.search.pareto import loss_hypervolume  # noqa: E402
from cubesearch.training import train  # noqa: E402
from cubesearch.training.finetune import Recipe, train_final  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
CACHE = RESULTS / "fidelity-runs"  # one JSON a (plan, seed): committed, so a later run resumes
RUNG_EPOCHS = (1, 3)  # the halving strategy's lower rungs (η = 3)


# --- plans ------------------------------------------------------------------------------------


def choose(ctx: Any, args: argparse.Namespace) -> list[tuple[str, dict]]:
    """The unconverted model, FullCube, the decoder preset, and random plans stratified over
    FLOPs (_plans.choose_plans: for the demo, a subset of the one-shot benchmark's 16 plans, so
    its supernet scores and 2-epoch trials apply)."""
    pool = _plans.choose_plans(ctx, args.pool, args.seed)
    randoms = pool[2:]
    k = args.plans - 3
    picks = sorted({round(i * (len(randoms) - 1) / max(1, k - 1)) for i in range(k)})
    decoder = {s.name: ctx.space.default_config() for s in select_sites(ctx.searchable, "decoder")}
    return [pool[0], pool[1], ("decoder", decoder), *[randoms[i] for i in picks]]


def plan_of(ctx: Any, sites: dict) -> Plan:
    return ctx.plan_for(sites)


# --- one run: the rungs, then the converged training ------------------------------------------


def data_options(ctx: Any) -> dict[str, Any]:
    s = ctx.settings
    return dict(data=ctx.datasets, input_size=(s.input_size[0], s.tile_size, s.tile_size),
                batch_size=s.batch_size, progress=False)


def rungs(history: list[dict[str, Any]]) -> dict[str, Any]:
    """The halving strategy's rung signals, read off the converged run: its rungs are prefixes
    of the final recipe's schedule (a promoted trial continues where its rung stopped), so rung
    r's IoU is the val IoU after epoch r, and TSE the sum of the first 3 epochs' training losses."""
    by_epoch = {round(h["epoch"]): h for h in history}
    out = {f"rung{r}": float(by_epoch[r]["val_iou"]) for r in RUNG_EPOCHS if r in by_epoch}
    if all(e in by_epoch for e in (1, 2, 3)):
        out["tse3"] = float(sum(by_epoch[e]["train_loss"] for e in (1, 2, 3)))
    return out


def converged(ctx: Any, plan: Plan | torch.nn.Module, seed: int, recipe: Recipe) -> dict[str, Any]:
    t0 = time.perf_counter()
    if isinstance(plan, Plan):
        r = train_final(plan, ctx.baseline_dir, recipe=recipe, seed=seed, **data_options(ctx))
    else:  # a pruned module: the same recipe, the baseline as teacher
        r = train(plan, teacher=str(ctx.baseline_dir), seed=seed,
                  **{**recipe.train_options(False), "new_lr": None}, **data_options(ctx))
    curve = [float(h["val_iou"]) for h in r.history]
    return {**rungs(r.history), "iou": float(r.metrics["iou"]), "curve": curve,
            "best_epoch": r.metrics.get("best_epoch"), "epochs_run": r.metrics["epochs"],
            "flattened": flattened(curve),
            "converge_seconds": time.perf_counter() - t0}


def pruned_model(ctx: Any, target_flops: float) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The trained baseline, channel-pruned (Torch-Pruning, L1, the same ratio in every layer)
    until its FLOPs at the
    cost model's input size are at most `target_flops` (fvcore's unit, as the cost model's: one
    multiply-add counts one)."""
    import torch_pruning as tp  # a dependency since Plan.widths (cubesearch.plan.width)

    model = load(ctx.baseline_dir).eval()
    size = tuple(ctx.settings.input_size)
    example = torch.zeros(1, *size)
    base_macs, _ = tp.utils.count_ops_and_params(model, example)
    head = class_head(model, example, ctx.settings.num_classes)
    pruner = tp.pruner.MagnitudePruner(model, example, importance=tp.importance.MagnitudeImportance(p=1),
                                       global_pruning=False, pruning_ratio=0.9, iterative_steps=40,
                                       ignored_layers=head)
    macs = base_macs
    for _ in range(40):
        pruner.step()
        macs, params = tp.utils.count_ops_and_params(model, example)
        if macs <= target_flops:
            break
    return model, {"macs_ratio": macs / base_macs, "gflops": macs / 1e9, "params": params}


def class_head(model: torch.nn.Module, example: torch.Tensor, num_classes: int) -> list[torch.nn.Module]:
    """The conv that makes the class logits (smp's `segmentation_head`, examples/unet.py's
    `head`…): the last conv run in a forward pass with `num_classes` output channels. Pruning
    must keep its outputs."""
    ran: list[torch.nn.Module] = []
    hooks = [m.register_forward_hook(lambda m, i, o: ran.append(m)) for m in model.modules()
             if isinstance(m, torch.nn.Conv2d) and m.out_channels == num_classes]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    if not ran:
        raise SystemExit(f"no conv with {num_classes} output channels: cannot find the class head")
    return [ran[-1]]


# --- the runs phase ---------------------------------------------------------------------------


def runs(args: argparse.Namespace) -> None:
    ctx = _plans.make_context(args)
    plans = choose(ctx, args)
    # KD on, as every run in the committed cache was trained (the recipe's default is now off:
    # benchmarks/kd_ablation.py)
    recipe = Recipe(epochs=args.epochs, patience=args.patience or None, kd_weight=1.0)
    cache = Path(args.cache) / tag(args)
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "plans.json").write_text(json.dumps(
        [{"label": lb, "gflops": ctx.cost.flops(p) / 1e9, "sites": {n: c.to_dict() for n, c in p.items()}}
         for lb, p in plans], indent=1))
    jobs = [(i, seed) for i in _plans.spread_order(len(plans)) for seed in range(args.seeds)]
    jobs[6:6] = [("pruned", seed) for seed in range(args.seeds)] if args.pruning else []
    k, n = (int(v) for v in args.worker.split("/"))
    for pos, (i, seed) in enumerate(jobs):
        if pos % n != k:
            continue
        file = cache / f"{'pruned' if i == 'pruned' else f'plan{i:02d}'}-seed{seed}.json"
        if file.exists() or not _plans.claim(file):
            continue
        load0 = os.getloadavg()[0]
        if i == "pruned":
            model, info = pruned_model(ctx, ctx.cost.flops(plans[1][1]))
            row = {"label": "channel pruning (Torch-Pruning)", **info, **converged(ctx, model, seed, recipe)}
        else:
            label, sites = plans[i]
            plan = plan_of(ctx, sites)
            row = {"plan": i, "label": label, "gflops": ctx.cost.flops(sites) / 1e9,
                   "sites": len(sites), **converged(ctx, plan, seed, recipe)}
        row.update(seed=seed, load_start=load0, load_end=os.getloadavg()[0],
                   threads=torch.get_num_threads())
        _plans.write_json(file, row)
        file.with_suffix(".claim").unlink(missing_ok=True)
        print(f"[{time.strftime('%H:%M:%S')}] {row['label']} seed {seed}: converged IoU {row['iou']:.4f} "
              f"(best epoch {row['best_epoch']}, flattened {row['flattened']}) "
              f"{' '.join(f'{k} {row[k]:.4f}' for k in ('rung1', 'rung3', 'tse3') if k in row)} "
              f"in {row['converge_seconds']:.0f} s (load {load0:.1f})", flush=True)


def tag(args: argparse.Namespace) -> str:
    """The runs' folder name: model, its --model-arg values, recipe epochs, patience, plans."""
    kw = "".join(f"-{k}{v}" for k, v in sorted(args.model_kwargs.items()))
    return f"{Path(args.model).stem.replace(':', '-')}{kw}-e{args.epochs:g}-p{args.patience}-n{args.plans}"


def result_name(args: argparse.Namespace) -> str:
    """results/NAME.{md,json,png}: `fidelity` for the demo model, `fidelity-STEM` for another."""
    return "fidelity" if "resnet18" in args.model else f"fidelity-{Path(args.model).stem.replace(':', '-')}"


# --- the trial2 phase: today's search trial, for plans without the one-shot cache's -----------


def trial2(args: argparse.Namespace) -> None:
    ctx = _plans.make_context(args)
    plans = choose(ctx, args)
    api = _plans.search_api()
    cache = Path(args.cache) / tag(args)
    cache.mkdir(parents=True, exist_ok=True)
    for i, (label, sites) in enumerate(plans):
        for seed in range(args.seeds):
            file = cache / f"trial2-plan{i:02d}-seed{seed}.json"
            if file.exists() or (args.reuse_oneshot and oneshot_trial(args, ctx, sites, seed) is not None):
                continue
            out = _plans.outcome(api.evaluate_plan(ctx, sites, 500 + i + _plans.SEED_STRIDE * seed))
            _plans.write_json(file, {"plan": i, "label": label, "seed": seed, "iou": out["iou"],
                                      "seconds": out["seconds"]})
            print(f"[{time.strftime('%H:%M:%S')}] trial2 {label} seed {seed}: {out['iou']:.4f}", flush=True)


# --- the supernet signal: stored results only (the one-shot strategy is retired) --------------


def own_supernet(args: argparse.Namespace) -> dict[str, Any] | None:
    """Supernet scores an earlier version's `--phase supernet` stored (CACHE/TAG/supernet.json)."""
    file = Path(args.cache) / tag(args) / "supernet.json"
    return json.loads(file.read_text()) if file.exists() else None


def oneshot_record(args: argparse.Namespace, ctx: Any, sites: dict) -> dict | None:
    """The one-shot benchmark's recorded row for this plan (same FLOPs and sites), if any."""
    file = Path(args.results) / "oneshot.json"
    if not file.exists() or "resnet18" not in args.model:
        return None
    gflops = ctx.cost.flops(sites) / 1e9
    for row in json.loads(file.read_text())["plans"]:
        if abs(row["gflops"] - gflops) < 1e-6 and row["sites"] == len(sites):
            return row
    return None


def oneshot_trial(args: argparse.Namespace, ctx: Any, sites: dict, seed: int) -> float | None:
    row = oneshot_record(args, ctx, sites)
    return row.get(f"standalone_seed{seed}") if row else None


# --- the report -------------------------------------------------------------------------------

SIGNALS = {  # name → (what it is, epochs of training per plan it costs, higher is better)
    "rung1": ("halving rung 1: 1 epoch of the final recipe", 1.0, True),
    "rung3": ("halving rung 2: 1 + 2 epochs", 3.0, True),
    "tse3": ("sum of training losses over those 3 epochs (Ru et al.)", 3.0, False),
    "trial2": ("today's search trial: 2 epochs", 2.0, True),
    "supernet": ("one-shot supernet score (3 supernet epochs, then ~0.1 epoch a plan)", 0.1, True),
}


NOT_MEASURED = {  # why a signal has no figure
    "supernet": "no supernet scores for these plans: the retired one-shot benchmark's stored "
                "results cover the demo model only",
    "trial2": "no 2-epoch trials for these plans: `--phase trial2` was not run",
}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def gather(args: argparse.Namespace, ctx: Any, plans: list[tuple[str, dict]]) -> list[dict[str, Any]]:
    """One row a plan with every seed's results and every signal (mean over seeds)."""
    cache = Path(args.cache) / tag(args)
    own = own_supernet(args)
    scores = {r["plan"]: r["iou"] for r in own["scores"]} if own else {}
    rows = []
    for i, (label, sites) in enumerate(plans):
        runs_ = [json.loads(f.read_text()) for f in sorted(cache.glob(f"plan{i:02d}-seed*.json"))]
        if len(runs_) < args.seeds:
            continue
        row: dict[str, Any] = {"plan": i, "label": label, "gflops": ctx.cost.flops(sites) / 1e9,
                               "sites": len(sites), "seeds": {r["seed"]: r for r in runs_},
                               "iou": _mean([r["iou"] for r in runs_])}
        for name in ("rung1", "rung3", "tse3"):
            row[name] = _mean([r[name] for r in runs_])
        trials = []
        for seed in range(args.seeds):
            f = cache / f"trial2-plan{i:02d}-seed{seed}.json"
            v = json.loads(f.read_text())["iou"] if f.exists() else (
                oneshot_trial(args, ctx, sites, seed) if args.reuse_oneshot else None)
            if v is not None:
                trials.append(v)
        row["trial2"] = _mean(trials) if len(trials) == args.seeds else None
        record = oneshot_record(args, ctx, sites) if args.reuse_oneshot else None
        row["supernet"] = record.get("supernet") if record else scores.get(i)
        rows.append(row)
    return rows


def rank(rows: list[dict], name: str) -> dict[str, Any]:
    have = [r for r in rows if r.get(name) is not None]
    if len(have) < 3:
        return {"n": len(have), "kendall_tau": None, "spearman_rho": None}
    sign = 1.0 if SIGNALS[name][2] else -1.0
    score, truth = [sign * r[name] for r in have], [r["iou"] for r in have]
    return {"n": len(have), "kendall_tau": kendall_tau(score, truth),
            "spearman_rho": spearman_rho(score, truth)}


def pick_proxy(taus: dict[str, float | None], seed_tau: float) -> str:
    """The rule: the cheapest signal whose τ is ≥ 0.65 and ≥ 0.8× the seed-to-seed τ."""
    ok = [n for n, t in taus.items() if t is not None and t >= 0.65 and t >= 0.8 * seed_tau]
    return min(ok, key=lambda n: SIGNALS[n][1]) if ok else "halving"


def add_second_look(fig: dict, cache: Path, args: argparse.Namespace) -> None:
    """The cross-seed statistics, and the rule re-applied to the cross-seed τ."""
    fig.update(fidelity_stats.second_look(fig, cache, oneshot_plans(args)))
    fig["default_proxy_cross_seed"] = pick_proxy(fig["cross_seed"], fig["seed_to_seed_tau"])


def replay_halving(rows: list[dict], top_epochs: float, eta: int = 3) -> dict[str, Any]:
    """Both strategies replayed on the measured plans at equal training epochs, each front
    judged by the converged IoU of the plans it would export: `trials` trains every plan for 2
    epochs and exports its 2-epoch front; `halving` trains every plan 1 epoch, promotes 1/η by
    MO-ASHA's rule to rung 3, then 1/η of those to the top rung (the final recipe), and exports
    the top rung's front (plus, at equal epochs, nothing else)."""
    from cubesearch.search.promotion import loss_rows, promote

    ref = np.array([0.0, max(r["gflops"] for r in rows) * 1.01])
    hv = lambda chosen: loss_hypervolume(  # noqa: E731
        loss_rows([r["iou"] for r in chosen], [r["gflops"] for r in chosen]), ref)
    trials_rows = [r for r in rows if r.get("trial2") is not None]
    t_losses = loss_rows([r["trial2"] for r in trials_rows], [r["gflops"] for r in trials_rows])
    t_front = [trials_rows[i] for i in promote(t_losses, len(trials_rows))
               if _on_front(t_losses, i)]
    r1 = loss_rows([r["rung1"] for r in rows], [r["gflops"] for r in rows])
    up = promote(r1, max(1, len(rows) // eta))
    r3 = loss_rows([rows[i]["rung3"] for i in up], [rows[i]["gflops"] for i in up])
    top = [rows[up[j]] for j in promote(r3, max(1, len(up) // eta))]
    h_front = [r for r in top if _on_front(loss_rows([x["iou"] for x in top], [x["gflops"] for x in top]),
                                             top.index(r))]
    epochs = {"trials": 2.0 * len(trials_rows),
              "halving": len(rows) * 1 + len(up) * 2 + len(top) * (top_epochs - 3)}
    return {"trials_front": [r["label"] for r in t_front], "halving_front": [r["label"] for r in h_front],
            "trials_hv": hv(t_front), "halving_hv": hv(h_front),
            "halving_hv_ratio": hv(h_front) / hv(t_front) if hv(t_front) else None, "epochs": epochs}


def _on_front(losses: np.ndarray, i: int) -> bool:
    return not any(np.all(losses[j] <= losses[i]) and np.any(losses[j] < losses[i])
                   for j in range(len(losses)))


def report(args: argparse.Namespace) -> None:
    ctx = _plans.make_context(args, baseline=False)
    plans = choose(ctx, args)
    rows = gather(args, ctx, plans)
    cache = Path(args.cache) / tag(args)
    if len(rows) < 3:
        raise SystemExit(f"not enough plans with {args.seeds} seeds yet ({len(rows)})")
    paired = next((r for r in rows if r["label"] == "unconverted"), None)
    for r in rows:
        if paired is not None:
            deltas = [r["seeds"][s]["iou"] - paired["seeds"][s]["iou"] for s in range(args.seeds)]
            r["delta_vs_paired"], r["delta_spread"] = _mean(deltas), max(deltas) - min(deltas)
    seed_tau = kendall_tau([r["seeds"][0]["iou"] for r in rows], [r["seeds"][1]["iou"] for r in rows])
    signals = {name: rank(rows, name) for name in SIGNALS}
    not_measured = {n: NOT_MEASURED.get(n, "fewer than 3 plans have it") for n, f in signals.items()
                    if f["kendall_tau"] is None}
    default = pick_proxy({n: f["kendall_tau"] for n, f in signals.items()}, seed_tau)
    pruned = [json.loads(f.read_text()) for f in sorted(cache.glob("pruned-seed*.json"))]
    full = next((r for r in rows if r["label"] == "FullCube"), None)
    all_runs = [run for r in rows for run in r["seeds"].values()]
    curves_flat = [run["flattened"] for run in all_runs]
    replay = replay_halving(rows, args.epochs)
    fig = {
        "model": args.model, "model_kwargs": args.model_kwargs, "n_plans": len(rows),
        "seeds": args.seeds, "epochs": args.epochs,
        "patience": args.patience, "convergence_criterion":
            f"the last {FLAT_WINDOW} epochs raise the best val IoU before them by < {FLAT_DELTA}",
        "flattened_share": sum(curves_flat) / len(curves_flat),
        "default_proxy": default,
        "default_proxy_kendall_tau": signals[default]["kendall_tau"] if default in signals else None,
        "converged_seed_kendall_tau": seed_tau, "signals": signals, "not_measured": not_measured,
        "fullcube_iou_ratio": full["iou"] / paired["iou"] if full and paired else None,
        "paired_baseline_iou": paired["iou"] if paired else None,
        "pruning": ({"iou": _mean([p["iou"] for p in pruned]), "gflops": pruned[0]["gflops"],
                     "iou_ratio": _mean([p["iou"] for p in pruned]) / paired["iou"] if paired else None,
                     "seeds": len(pruned)} if pruned else None),
        "halving_hv_ratio": replay["halving_hv_ratio"], "halving_replay": replay,
        "supernet_training": ({k: own[k] for k in ("seconds", "baseline_epochs", "passes", "threads")
                               if k in own} if (own := own_supernet(args)) else None),
        "machine": machine(), "load_range": [min(run["load_start"] for run in all_runs),
                                             max(run["load_end"] for run in all_runs)],
        "plans": [{k: v for k, v in r.items() if k != "seeds"} | {
            "seed_iou": [r["seeds"][s]["iou"] for s in range(args.seeds)],
            "curves": [r["seeds"][s]["curve"] for s in range(args.seeds)],
            "best_epochs": [r["seeds"][s]["best_epoch"] for s in range(args.seeds)]} for r in rows],
    }
    add_second_look(fig, cache, args)
    write(fig, Path(args.results), result_name(args))


def oneshot_plans(args: argparse.Namespace) -> list[dict] | None:
    """The one-shot benchmark's plans (its 2-epoch trials and supernet scores), demo model only."""
    file = Path(args.results) / "oneshot.json"
    return json.loads(file.read_text())["plans"] if "resnet18" in args.model and file.exists() else None


def write(fig: dict, results: Path, name: str) -> None:
    _plans.write_json(results / f"{name}.json", fig)
    (results / f"{name}.md").write_text(render(fig, name))
    plot(fig, results / f"{name}.png")
    print((results / f"{name}.md").read_text())


def rerender(args: argparse.Namespace) -> None:
    """The report again from the stored JSON and runs (no model, no training): the second look's
    statistics (benchmarks/fidelity_stats.py) added, the page re-rendered."""
    name = result_name(args)
    results = Path(args.results)
    fig = json.loads((results / f"{name}.json").read_text())
    args.epochs, args.patience, args.plans = fig["epochs"], fig["patience"], fig["n_plans"]
    add_second_look(fig, Path(args.cache) / tag(args), args)
    write(fig, results, name)


def _f(v: Any, nd: int = 3) -> str:
    return "–" if v is None else f"{v:.{nd}f}" if isinstance(v, float) else str(v)


def trained_label(fig: dict) -> str:
    """"converged" only when every run met the flattening criterion; else "after N epochs"."""
    return "converged" if fig.get("flattened_share") == 1 else f"after {fig['epochs']:g} epochs"


def _ci(ci: list[float] | None) -> str:
    return "–" if not ci else f"[{ci[0]:.2f}, {ci[1]:.2f}]"


def recipe_line(fig: dict) -> str:
    """Exactly which recipe trained the runs (it is not today's default: KD was on)."""
    stop = (f"early stopping after {fig['patience']} epochs without improvement"
            if fig["patience"] else "no early stopping")
    return (f"`cubesearch.training.finetune.Recipe` with {fig['epochs']:g} epochs scheduled, "
            f"KD from the baseline on (`kd_weight 1`; today's default is off), cosine to 0, "
            f"best weights kept, {stop}. Final IoU is the best epoch's on the validation set that "
            "also reports it (no separate test split).")


def render(fig: dict, name: str) -> str:
    kw = " ".join(f"{k}={v}" for k, v in (fig.get("model_kwargs") or {}).items())
    after = trained_label(fig)
    lines = [f"# Cheap signals vs IoU {after}: `{fig['model']}`" + (f" ({kw})" if kw else ""), "",
             f"{fig['n_plans']} plans × {fig['seeds']} seeds, each trained by {recipe_line(fig)} "
             f"Flattened ({fig['convergence_criterion']}): {fig['flattened_share']:.0%} of the runs"
             + (f"; the last 2 epochs still raised the best IoU by a median "
                f"{fig['late_gain']['last_2_epochs_gain_median']:+.3f} (max "
                f"{fig['late_gain']['last_2_epochs_gain_max']:+.3f}), so these are figures {after}, "
                "not converged" if "late_gain" in fig and after != "converged" else "")
             + f". Generated by `benchmarks/fidelity.py`; {fig['machine']}; load "
             f"{fig['load_range'][0]:.1f}–{fig['load_range'][1]:.1f}.", ""]
    lines += cross_seed_section(fig) if "cross_seed" in fig else []
    lines += ["## Signals against the mean of the same runs", "",
              "rung1, rung3 and tse3 are read off the very runs whose final IoU is the target, so "
              "they share its seed noise: these τ are optimistic (see the cross-seed table).", "",
              md_table(["signal", "epochs a plan", "plans", "Kendall τ", "95 % CI", "Spearman ρ"],
                       [[f"{n} — {SIGNALS[n][0]}", f"{SIGNALS[n][1]:g}", str(f['n']), _f(f["kendall_tau"]),
                         _ci(fig.get("same_run_tau_ci95", {}).get(n)), _f(f["spearman_rho"])]
                        for n, f in fig["signals"].items()]), "",
              *[f"Not measured on this model: `{n}` ({why}).\n"
                for n, why in fig.get("not_measured", {}).items()],
              "Default proxy by the rule on these same-run τ (τ ≥ 0.65 and ≥ 0.8× the seed τ, "
              f"cheapest): {fig['default_proxy']}.", "", "## Plans", "",
              md_table(["plan", "GFLOPs", "sites", f"IoU {after} (seeds)", "Δ vs paired baseline",
                        "rung1", "rung3", "trial2", "supernet"],
                       [[p["label"], f"{p['gflops']:.2f}", str(p["sites"]),
                         f"{p['iou']:.3f} ({', '.join(f'{v:.3f}' for v in p['seed_iou'])})",
                         f"{p.get('delta_vs_paired', 0):+.3f} ± {p.get('delta_spread', 0) / 2:.3f}",
                         _f(p["rung1"]), _f(p["rung3"]), _f(p["trial2"]), _f(p["supernet"])]
                        for p in sorted(fig["plans"], key=lambda p: p["gflops"])]), ""]
    lines += ratio_lines(fig) + replay_lines(fig) + [f"![proxy vs IoU {after}]({name}.png)", ""]
    return "\n".join(lines)


def cross_seed_section(fig: dict) -> list[str]:
    """The second look's table: τ with signal and target from different seeds, with intervals."""
    ci, vs = fig["tau_ci95"], fig.get("vs_trial2", {})
    rows = [[f"{n} — {SIGNALS[n][0]}", f"{SIGNALS[n][1]:g}", f"{t:.3f}",
             ", ".join(f"{k} {v:.2f}" for k, v in fig["cross_seed_pairs"][n].items()), _ci(ci.get(n)),
             (f"{vs[n]['diff']:+.2f} {_ci(vs[n]['ci95'])} (n {vs[n]['n']})" if n in vs else "")]
            for n, t in fig["cross_seed"].items()]
    rows.append(["seed 0 vs seed 1 final IoU (the ceiling)", "", _f(fig["seed_to_seed_tau"]), "",
                 _ci(ci.get("seed_to_seed")), ""])
    return ["## Signals across seeds (the figures to trust)", "",
            "Each signal from one seed's run against the *other* seed's final IoU (both directions "
            "averaged; a seedless signal against each seed), so signal and target share no run. "
            f"Intervals: {fig['bootstrap']}.", "",
            md_table(["signal", "epochs a plan", "cross-seed τ", "directions", "95 % CI",
                      "τ − trial2's τ, same plans [95 % CI]"], rows), "",
            decision_line(fig), "",
            "The rule (cheapest signal with τ ≥ 0.65 and ≥ 0.8× the seed τ) on the cross-seed τ: "
            f"**{fig.get('default_proxy_cross_seed', '–')}** (on the same-run τ it was "
            f"{fig['default_proxy']}). " + overlap_line(fig), ""]


def overlap_line(fig: dict) -> str:
    """Whether the signals' cross-seed intervals all overlap (then the rule's pick is a point
    estimate, not a measured difference)."""
    cis = [c for n, c in fig["tau_ci95"].items() if n in fig["cross_seed"] and c]
    if len(cis) > 1 and max(c[0] for c in cis) <= min(c[1] for c in cis):
        return "All the signals' intervals share a common range: the pick is not a measured difference."
    return "Some intervals do not overlap."


def decision_line(fig: dict) -> str:
    """What the statistics say about ranking on rung 3 (halving) vs the 2-epoch trial."""
    vs = fig.get("vs_trial2", {}).get("rung3")
    if not vs or not vs["ci95"]:
        return "rung 3 and the 2-epoch trial cannot be compared on these plans."
    tie = vs["ci95"][0] <= 0 <= vs["ci95"][1]
    return (f"Rung 3 against the 2-epoch trial across seeds: τ difference {vs['diff']:+.2f} "
            f"{_ci(vs['ci95'])} over {vs['n']} plans: "
            + ("**no better within the interval** — these runs do not tell the two apart."
               if tie and vs["diff"] <= 0 else "a tie within the interval." if tie
               else "rung 3 ranks better." if vs["diff"] > 0 else "the 2-epoch trial ranks better."))


def ratio_lines(fig: dict) -> list[str]:
    out = []
    if fig["pruning"]:
        pr = fig["pruning"]
        out += ["Channel pruning (Torch-Pruning, L1, uniform per layer, one ratio) at "
                f"{pr['gflops']:.2f} GFLOPs, same recipe (KD on): IoU {pr['iou']:.3f} "
                f"({pr['iou_ratio']:.3f}× the paired baseline; "
                f"FullCube: {_f(fig['fullcube_iou_ratio'])}×).", ""]
    r = fig.get("ratios", {})
    for key, what in (("fullcube", "FullCube"), ("pruning", "channel pruning")):
        if key in r:
            out.append(f"- {what} / paired baseline: {r[key]['ratio']:.3f}× (per seed "
                       f"{', '.join(f'{v:.3f}' for v in r[key]['per_seed'])}; seed bootstrap "
                       f"{_ci(r[key]['ci95_seed_bootstrap'])}: with {fig['seeds']} seeds, the seeds' span).")
    if "fullcube_last_epoch" in r:
        out.append(f"- FullCube / paired on the last epoch instead of the best: "
                   f"{r['fullcube_last_epoch']:.3f}× (the best epoch is chosen on the validation set "
                   "that reports it).")
    return out + ([""] if r else [])


def replay_lines(fig: dict) -> list[str]:
    rp = fig["halving_replay"]
    out = ["## Halving vs trials (replayed on these plans)", "",
           f"First replay (unequal: trials credited with final IoUs it did not train): trials front "
           f"{rp['trials_front']} (HV {rp['trials_hv']:.3f}, {rp['epochs']['trials']:g} epochs); halving "
           f"front {rp['halving_front']} (HV {rp['halving_hv']:.3f}, {rp['epochs']['halving']:g} epochs); "
           f"ratio {_f(rp['halving_hv_ratio'])}.", ""]
    eq = fig.get("equal_epoch_replay")
    if eq:
        out += [f"At equal epochs ({eq['plans']} plans with a 2-epoch trial; each side credited only "
                f"with models it trained): halving {eq['epochs']['halving']:g} epochs, front "
                f"{eq['halving_front']} (HV {eq['halving_hv']:.3f}); trials {eq['epochs']['trials']:g} "
                f"epochs ({eq['trials_finalists']} of its front trained on by the final recipe, the rest "
                f"credited their 2-epoch IoU), front {eq['trials_front']} (HV {eq['trials_hv']:.3f}); "
                f"halving / trials **{_f(eq['halving_hv_ratio'])}** "
                f"{_ci(eq['halving_hv_ratio_ci95'])}.", ""]
    return out


def plot(fig: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in SIGNALS if fig["signals"][n]["n"] >= 3]
    f, axes = plt.subplots(1, len(names) + 1, figsize=(4 * (len(names) + 1), 3.6))
    truth = {p["label"]: p["iou"] for p in fig["plans"]}
    for ax, n in zip(axes, names, strict=False):
        pts = [(p[n], truth[p["label"]]) for p in fig["plans"] if p.get(n) is not None]
        ax.scatter([a for a, _ in pts], [b for _, b in pts], s=18)
        ax.set_title(f"{n}: τ {fig['signals'][n]['kendall_tau']:.2f} same run"
                     + (f", {fig['cross_seed'][n]:.2f} cross-seed" if n in fig.get("cross_seed", {}) else ""),
                     fontsize=9)
        ax.set_xlabel(n)
        ax.set_ylabel(f"IoU {trained_label(fig)}")
    ax = axes[-1]
    for p in fig["plans"]:
        ax.plot(range(1, len(p["curves"][0]) + 1), p["curves"][0], lw=0.8,
                color="k" if p["label"] == "unconverted" else None)
    ax.set_title("val IoU curves (seed 0)", fontsize=9)
    ax.set_xlabel("epoch")
    f.tight_layout()
    f.savefig(path, dpi=110)


# --- main -------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--phase", choices=("runs", "trial2", "report", "rerender", "all"),
                    default="all", help="all: runs, trial2, report; "
                    "rerender: the report from the stored JSON and runs, no model built")
    ap.add_argument("--model", default="smp:Unet:resnet18")
    ap.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                    help="passed to the model factory, as `cubesearch search --model-arg` (e.g. width=32)")
    ap.add_argument("--budget", default="70%")
    ap.add_argument("--plans", type=int, default=12, help="plans (3 references + random ones)")
    ap.add_argument("--pool", type=int, default=16, help="stratified plans to pick the random ones from")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=float, default=12.0, help="the final recipe's scheduled epochs")
    ap.add_argument("--patience", type=int, default=0, help="early stopping, in epochs (0: none; "
                    "the best weights are kept either way)")
    ap.add_argument("--val-tiles", type=int, default=192, help="validation tiles (the demo: 48, "
                    "whose IoU wobbles ±0.05 between epochs)")
    ap.add_argument("--no-pruning", dest="pruning", action="store_false",
                    help="leave out the channel-pruning reference")
    ap.add_argument("--reuse-oneshot", action="store_true", default=True,
                    help="2-epoch trials and supernet scores from the stored results/oneshot.json "
                    "where its plans match")
    ap.add_argument("--work", default="/tmp/cubesearch-oneshot")
    ap.add_argument("--cache", default=str(CACHE))
    ap.add_argument("--results", default=str(RESULTS))
    ap.add_argument("--worker", default="0/1", help="K/N: this process takes every N-th run from K")
    ap.add_argument("--smoke", action="store_true", help="tiny settings: checks the pipeline only")
    args = ap.parse_args()
    args.model_kwargs = model_args(args.model_arg)
    if args.phase in ("runs", "all"):
        runs(args)
    if args.phase in ("trial2", "all"):
        trial2(args)
    if args.phase in ("report", "all"):
        report(args)
    if args.phase == "rerender":
        rerender(args)


if __name__ == "__main__":
    main()

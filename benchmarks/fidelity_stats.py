"""The fidelity benchmark's second look (issue 30): statistics that survive it.

`benchmarks/fidelity.py` first scored each cheap signal against the mean final IoU of the very
runs the signal was read off (rung1, rung3 and tse3 are epochs of the final run), so signal and
target shared one seed's noise. Here, from the stored runs alone (no training):

- `cross_seed`: every signal's Kendall τ with the signal from one seed and the target the
  *other* seed's final IoU, averaged over both directions (each direction listed too);
- `tau_ci95`: percentile-bootstrap 95 % intervals over plans (plans resampled) for every τ,
  and for the difference of each signal's cross-seed τ from the 2-epoch trial's;
- ratios (FullCube / paired, pruning / paired) per seed and with a seed bootstrap;
- halving vs trials replayed at *equal* epochs: the trials side gets the halving side's
  epochs, trains every plan 2 epochs and spends what is left training its 2-epoch front on by
  the final recipe; each side is credited only with the IoU of models it trained;
- how far the runs were from flat: the gain of the last 2 epochs, the share that flattened.
"""

from __future__ import annotations

import json
from itertools import permutations
from pathlib import Path
from typing import Any

import numpy as np
from _stats import bootstrap_ci, tau

from cubesearch.search.pareto import loss_hypervolume
from cubesearch.search.promotion import loss_rows, promote

HIGHER_IS_BETTER = {"rung1": True, "rung3": True, "tse3": False, "trial2": True, "supernet": True}


def per_seed_signals(fig: dict, cache: Path, oneshot_plans: list[dict] | None) -> dict[str, Any]:
    """signal → {seed: [value or None per plan]} (seedless signals under seed None), and the
    final IoU per seed, plans in `fig['plans']` order."""
    seeds = range(fig["seeds"])
    out: dict[str, dict] = {n: {s: [] for s in seeds} for n in ("rung1", "rung3", "tse3", "trial2")}
    out["supernet"] = {None: [p.get("supernet") for p in fig["plans"]]}
    iou: dict[int, list[float]] = {s: [p["seed_iou"][s] for p in fig["plans"]] for s in seeds}
    for p in fig["plans"]:
        match = _oneshot_row(p, oneshot_plans)
        for s in seeds:
            run = json.loads((cache / f"plan{p['plan']:02d}-seed{s}.json").read_text())
            for n in ("rung1", "rung3", "tse3"):
                out[n][s].append(run.get(n))
            f = cache / f"trial2-plan{p['plan']:02d}-seed{s}.json"
            out["trial2"][s].append(json.loads(f.read_text())["iou"] if f.exists()
                                    else (match or {}).get(f"standalone_seed{s}"))
    return {"signals": out, "iou": iou}


def _oneshot_row(plan: dict, oneshot_plans: list[dict] | None) -> dict | None:
    """The one-shot benchmark's row for this plan (same FLOPs and sites), as fidelity.py matches."""
    for row in oneshot_plans or ():
        if abs(row["gflops"] - plan["gflops"]) < 1e-6 and row["sites"] == plan["sites"]:
            return row
    return None


def _signed(name: str, values: list) -> list:
    sign = 1.0 if HIGHER_IS_BETTER[name] else -1.0
    return [None if v is None else sign * v for v in values]


def cross_pairs(name: str, by_seed: dict, iou: dict) -> list[tuple[Any, int]]:
    """(signal seed, target seed) pairs that never share a run: s ≠ t, or a seedless signal
    against each seed."""
    if None in by_seed:
        return [(None, t) for t in iou]
    return list(permutations(iou, 2))


def cross_tau(name: str, by_seed: dict, iou: dict, idx: np.ndarray | None = None) -> dict | None:
    """Mean over `cross_pairs` of τ(signal from one seed, the other seed's final IoU), on the
    plans that have the signal under every seed (`idx`: a bootstrap resample of plan positions)."""
    have = [i for i in range(len(next(iter(iou.values()))))
            if all(by_seed[s][i] is not None for s in by_seed)]
    if idx is not None:
        have = [have[j] for j in idx]
    pairs = {}
    for s, t in cross_pairs(name, by_seed, iou):
        sig = _signed(name, by_seed[s])
        v = tau([sig[i] for i in have], [iou[t][i] for i in have])
        if v is None:
            return None
        pairs[f"{s}->{t}" if s is not None else f"->{t}"] = v
    return {"n": len(have), "tau": float(np.mean(list(pairs.values()))), "pairs": pairs} if pairs else None


def n_with(by_seed: dict, iou: dict) -> int:
    return sum(all(by_seed[s][i] is not None for s in by_seed) for i in range(len(next(iter(iou.values())))))


def taus_with_ci(sig: dict, iou: dict, fig: dict) -> dict[str, Any]:
    """cross_seed τ, their intervals, the same-run τ's intervals, the seed-to-seed τ's, and each
    signal's τ minus the 2-epoch trial's on their common plans (with its interval)."""
    cross, ci, pairs = {}, {}, {}
    for name, by_seed in sig.items():
        n = n_with(by_seed, iou)
        r = cross_tau(name, by_seed, iou) if n >= 3 else None
        if r is None:
            continue
        cross[name], pairs[name] = r["tau"], r["pairs"]
        ci[name] = bootstrap_ci(lambda idx, name=name, by_seed=by_seed: (
            (x := cross_tau(name, by_seed, iou, idx)) and x["tau"]), n)
    seeds = list(iou)
    ceiling = tau(iou[seeds[0]], iou[seeds[1]]) if len(seeds) > 1 else None
    n_plans = len(iou[seeds[0]])
    ci["seed_to_seed"] = bootstrap_ci(lambda idx: tau([iou[seeds[0]][i] for i in idx],
                                                      [iou[seeds[1]][i] for i in idx]), n_plans)
    same_run = {}
    mean_iou = [float(np.mean([iou[s][i] for s in seeds])) for i in range(n_plans)]
    for name in fig["signals"]:
        vals = _signed(name, [p.get(name) for p in fig["plans"]])
        have = [i for i, v in enumerate(vals) if v is not None]
        if len(have) >= 3:
            same_run[name] = bootstrap_ci(lambda idx, vals=vals, have=have: tau(
                [vals[have[j]] for j in idx], [mean_iou[have[j]] for j in idx]), len(have))
    return {"cross_seed": cross, "cross_seed_pairs": pairs, "tau_ci95": ci,
            "seed_to_seed_tau": ceiling, "same_run_tau_ci95": same_run,
            "vs_trial2": diff_vs_trial2(sig, iou)}


def diff_vs_trial2(sig: dict, iou: dict) -> dict[str, Any]:
    """Each signal's cross-seed τ minus the 2-epoch trial's, on the plans both have, with a
    bootstrap interval over those plans: the decision between halving and trials rests on it."""
    if "trial2" not in sig or n_with(sig["trial2"], iou) < 3:
        return {}
    n = len(next(iter(iou.values())))
    out = {}
    for name in ("rung1", "rung3", "tse3", "supernet"):
        common = [i for i in range(n) if all(sig[name][s][i] is not None for s in sig[name])
                  and all(sig["trial2"][s][i] is not None for s in sig["trial2"])]
        if len(common) < 3:
            continue

        def d(idx: np.ndarray | None, name: str = name, common: list = common) -> float | None:
            pick = common if idx is None else [common[j] for j in idx]
            sub = lambda by: {s: [v[i] for i in pick] for s, v in by.items()}  # noqa: E731
            a = cross_tau(name, sub(sig[name]), sub(iou))
            b = cross_tau("trial2", sub(sig["trial2"]), sub(iou))
            return None if a is None or b is None else a["tau"] - b["tau"]

        out[name] = {"n": len(common), "diff": d(None), "ci95": bootstrap_ci(d, len(common))}
    return out


def ratios(fig: dict, cache: Path) -> dict[str, Any]:
    """FullCube's and the pruning reference's final IoU over the paired baseline's, per seed
    (paired by seed), their mean, a seed bootstrap (with 2 seeds: at most the two seeds' span),
    and FullCube's ratio on the last epoch instead of the best (the best epoch is picked on the
    validation set that reports it)."""
    by = {p["label"]: p for p in fig["plans"]}
    base = by.get("unconverted")
    if base is None:
        return {}
    seeds = fig["seeds"]
    arms = {"fullcube": by.get("FullCube") and by["FullCube"]["seed_iou"]}
    pruned = [json.loads(f.read_text()) for f in sorted(cache.glob("pruned-seed*.json"))]
    if len(pruned) == seeds:
        arms["pruning"] = [r["iou"] for r in sorted(pruned, key=lambda r: r["seed"])]
    out: dict[str, Any] = {}
    for name, ious in arms.items():
        if not ious:
            continue
        per = [ious[s] / base["seed_iou"][s] for s in range(seeds)]
        ci = bootstrap_ci(lambda idx, ious=ious: float(np.mean([ious[i] for i in idx])
                                                       / np.mean([base["seed_iou"][i] for i in idx])),
                          seeds)
        out[name] = {"ratio": float(np.mean(ious) / np.mean(base["seed_iou"])), "per_seed": per,
                     "ci95_seed_bootstrap": ci}
    if by.get("FullCube"):
        last = lambda p: float(np.mean([c[-1] for c in p["curves"]]))  # noqa: E731
        out["fullcube_last_epoch"] = last(by["FullCube"]) / last(base)
    return out


def late_gain(fig: dict) -> dict[str, Any]:
    """How far from flat the runs were: per run, the best IoU of the whole run minus the best
    before its last 2 epochs."""
    gains = [max(c) - max(c[:-2]) for p in fig["plans"] for c in p["curves"] if len(c) > 2]
    return {"last_2_epochs_gain_median": float(np.median(gains)),
            "last_2_epochs_gain_max": float(np.max(gains)), "runs": len(gains)}


def replay_equal(plans: list[dict], top_epochs: float, eta: int = 3) -> dict[str, Any]:
    """Halving vs trials at equal epochs on plans that have both signals (each a dict with
    rung1, rung3, trial2, iou, gflops). Halving: every plan 1 epoch, 1/η on to 3, 1/η of those
    to the top rung (the final recipe): its front is the top rung's models at their final IoU.
    Trials: the same epochs; every plan 2 epochs, then its 2-epoch front trained on by the final
    recipe in promotion order while epochs remain (those credited their final IoU, the rest of
    the front its 2-epoch IoU: a trial's model is a model too)."""
    ref = np.array([0.0, max(p["gflops"] for p in plans) * 1.01])
    hv = lambda pts: loss_hypervolume(loss_rows([i for i, _ in pts], [g for _, g in pts]), ref)  # noqa: E731
    n = len(plans)
    up = promote(loss_rows([p["rung1"] for p in plans], [p["gflops"] for p in plans]), max(1, n // eta))
    top_j = promote(loss_rows([plans[i]["rung3"] for i in up], [plans[i]["gflops"] for i in up]),
                    max(1, len(up) // eta))
    top = [plans[up[j]] for j in top_j]
    budget = n * 1 + len(up) * 2 + len(top) * (top_epochs - 3)
    t_order = promote(loss_rows([p["trial2"] for p in plans], [p["gflops"] for p in plans]), n)
    t_losses = loss_rows([p["trial2"] for p in plans], [p["gflops"] for p in plans])
    front = [i for i in t_order if not any(np.all(t_losses[j] <= t_losses[i]) and
                                           np.any(t_losses[j] < t_losses[i]) for j in range(n))]
    k = int(max(0.0, budget - 2 * n) // top_epochs)
    trained = set(front[:k])
    t_pts = [(plans[i]["iou"] if i in trained else plans[i]["trial2"], plans[i]["gflops"]) for i in front]
    h_pts = [(p["iou"], p["gflops"]) for p in top]
    return {"plans": n, "epochs": {"halving": budget, "trials": 2 * n + len(trained) * top_epochs},
            "trials_finalists": len(trained), "halving_hv": hv(h_pts), "trials_hv": hv(t_pts),
            "halving_hv_ratio": hv(h_pts) / hv(t_pts) if hv(t_pts) else None,
            "halving_front": [p["label"] for p in top], "trials_front": [plans[i]["label"] for i in front]}


def replay_with_ci(fig: dict) -> dict[str, Any]:
    plans = [p for p in fig["plans"] if p.get("trial2") is not None]
    out = replay_equal(plans, fig["epochs"])

    def ratio(idx: np.ndarray) -> float | None:
        sub = [plans[i] for i in idx]
        if len({p["label"] for p in sub}) < 3:
            return None
        return replay_equal(sub, fig["epochs"])["halving_hv_ratio"]

    out["halving_hv_ratio_ci95"] = bootstrap_ci(ratio, len(plans), boot=500)
    return out


def second_look(fig: dict, cache: Path, oneshot_plans: list[dict] | None) -> dict[str, Any]:
    """Everything above, as keys to merge into the benchmark's JSON."""
    data = per_seed_signals(fig, cache, oneshot_plans)
    return {**taus_with_ci(data["signals"], data["iou"], fig), "ratios": ratios(fig, cache),
            "late_gain": late_gain(fig), "equal_epoch_replay": replay_with_ci(fig),
            "bootstrap": "percentile, 2000 resamples of the plans (500 for the replay), seed 0"}

"""`cubesearch.ablate(model)`: the paper's ablation tables for the user's model and data.

The paper ablates its block one knob at a time (router none/pre/post, attention on/off, lattice
stride 1/2, depth 1 vs deeper; Tab. 3 and 4), one training per row. Here every row is read off
the site map (`cubesearch.search.sitemap`: `OUT/map.json`, measured once and reused by `cubesearch map`
and `search --strategy map` in the same --out), so a table costs one map:

- presets: `fullcube` (every site the space searches replaced) and `decoder` (the searchable
  sites in the decoder), each with the *default config* (the paper's block, `CubeConfig()`,
  where the space allows its values: `SearchSpace.default_config`) and every config that differs
  from it in one knob, for each value the space allows (`--knob` narrows the knobs and values);
- the map's one-knob subset measures each (site, config) cell once: the block put alone into the
  trained baseline, fitted by blockwise distillation, and the model's validation IoU (ΔIoU
  against the baseline's). A row's IoU is the additive prediction: the baseline's IoU plus the
  ΔIoU of its config's cell at each of the preset's sites (`MapTable.predict`, as the map
  strategy predicts plans). It is a prediction, not a trained model's IoU: the blocks' effects
  are measured one at a time, and nothing trains end to end;
- a row is priced by the cost model (GFLOPs, params; no model built) and compared with its
  preset's default row (ΔIoU); the unconverted model is the reference (the baseline's IoU);
- `confirm=True` trains each row (and the reference) as a search trial from the trained
  baseline (`evaluate_plan`: warm start, the blocks' distillation, `epochs_per_trial` of
  fine-tuning), checkpoints under `OUT/trials/ablation-Nep/trial_NNNN` (reused by a later run
  that asks for the same plan and epochs);
- a markdown table per preset (`ablation-PRESET.md`) is written in OUT, beside map.json.

A site where a row's config cannot go (router 'none' needs C_in divisible by 4) keeps its conv in
that row, and the row says so. (The rows were scored in the one-shot search's supernet until that
was retired: it ranked plans worst of all signals; see CHANGELOG.md.)
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from cubesearch.blocks import CubeConfig
from cubesearch.core.errors import CubesearchError
from cubesearch.core.helpers import atomic_write, file_lock
from cubesearch.core.logging import get_logger, progress_enabled
from cubesearch.plan.checkpoint import check_destination
from cubesearch.plan.plan import router_problem
from cubesearch.plan.space import SearchSpace
from cubesearch.search.context import SearchContext, build_context
from cubesearch.search.evaluators import evaluate_plan
from cubesearch.search.evaluators.finetune import prepare_baseline
from cubesearch.search.objectives import plan_cost
from cubesearch.search.settings import SearchSettings
from cubesearch.search.sitemap.build import SiteMap, build_map
from cubesearch.search.sitemap.options import DEFAULT, KNOB_ORDER, knob_values, parse_knob

__all__ = ["DEFAULT", "KNOB_ORDER", "PRESETS", "AblationResult", "AblationRow", "ablate",
           "knob_values", "parse_knob", "parse_presets", "plan_rows", "preset_sites"]

PRESETS = ("fullcube", "decoder")
CONFIRM_STUDY = "ablation"  # confirmed rows: OUT/trials/ablation-Nep/trial_NNNN (N epochs)
SUBSET = "one-knob"  # the map's cells the rows are read from
IOU_LABEL = "predicted IoU (site map, additive)"


@dataclass
class AblationRow:
    """One configuration of one preset: the default config, or it with one knob changed."""

    preset: str
    knob: str  # DEFAULT, or the knob that differs from the default config
    value: Any  # the knob's value (the default row: its config's short label)
    config: CubeConfig
    plan: dict[str, CubeConfig] = field(repr=False)  # site → config (kept sites absent)
    kept: list[str] = field(default_factory=list)  # preset sites left as convs, and why
    gflops: float = 0.0  # cost model
    params: int = 0
    iou: float | None = None  # predicted: baseline IoU + Σ the plan's cells' ΔIoU (site map)
    delta_iou: float | None = None  # vs the preset's default row
    confirmed_iou: float | None = None  # --confirm: a real trial's IoU
    confirmed_delta: float | None = None
    checkpoint: str | None = None

    @property
    def label(self) -> str:
        return DEFAULT if self.knob == DEFAULT else f"{self.knob}={_show(self.value)}"

    @property
    def note(self) -> str:
        if not self.kept:
            return ""
        return f"{len(self.kept)} site{'s' if len(self.kept) > 1 else ''} kept as conv"

    def to_dict(self) -> dict[str, Any]:
        return {"preset": self.preset, "knob": self.knob, "value": self.value,
                "config": self.config.to_dict(), "sites": len(self.plan), "kept": list(self.kept),
                "gflops": self.gflops, "params": self.params, "iou": self.iou,
                "delta_iou": self.delta_iou, "confirmed_iou": self.confirmed_iou,
                "confirmed_delta": self.confirmed_delta, "checkpoint": self.checkpoint,
                "note": self.note}


@dataclass
class AblationResult:
    """The rows of every preset, the unconverted reference, and where the tables went."""

    model: str
    space: str
    default: CubeConfig
    folder: Path  # OUT: the map's folder (the markdown files are in it)
    map: Path  # OUT/map.json, the rows' source
    reference: dict[str, Any]  # the unconverted model: iou (the baseline's), gflops, params
    rows: list[AblationRow]
    presets: list[str]
    conditions: dict[str, Any] = field(default_factory=dict)  # data, tiles, epochs… of the run
    notes: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    seconds: float = 0.0
    confirmed: bool = False
    measured: int = 0  # map cells measured by this run (the rest were in map.json already)

    def preset_rows(self, preset: str) -> list[AblationRow]:
        return [r for r in self.rows if r.preset == preset]

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "space": self.space, "default": self.default.to_dict(),
                "default_label": self.default.short(), "iou": IOU_LABEL, "folder": str(self.folder),
                "map": str(self.map), "measured": self.measured, "presets": list(self.presets),
                "reference": dict(self.reference), "rows": [r.to_dict() for r in self.rows],
                "conditions": dict(self.conditions), "notes": list(self.notes),
                "files": [str(f) for f in self.files], "seconds": self.seconds,
                "confirmed": self.confirmed}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str) + "\n"

    def caption(self) -> str:
        """What the IoU column is, in words (the markdown table's and the CLI's)."""
        return (f"One knob of the default config `{self.default.short()}` changed per row (space "
                f"`{self.space}`). IoU: {IOU_LABEL}: the baseline's IoU plus, at each of the "
                f"row's sites, the ΔIoU that config scored alone in the trained baseline after "
                f"blockwise distillation ({self.map}); no row was trained end to end"
                + (" except in the confirmed columns" if self.confirmed else "")
                + ". ΔIoU is against the preset's default row. GFLOPs and params are the cost "
                "model's.")

    def to_markdown(self, preset: str | None = None) -> str:
        """The table of one preset (every preset when None), with the run's conditions."""
        presets = [preset] if preset else list(self.presets)
        ref = self.reference
        lines = [f"# Ablation of {self.model} ({', '.join(presets)})", "", self.caption(), "",
                 "Conditions: " + ", ".join(f"{k} {_show(v)}" for k, v in self.conditions.items()),
                 "",
                 f"Unconverted model (the trained baseline): IoU {_num(ref.get('iou'))}, "
                 f"{_num(ref.get('gflops'), 3)} GFLOPs, {ref.get('params', 0):,} params"
                 + (f", confirmed IoU {_num(ref.get('confirmed_iou'))}" if self.confirmed else "")
                 + ".", ""]
        head = ["preset", "knob", "value", IOU_LABEL, "ΔIoU", "GFLOPs", "params", "sites"]
        if self.confirmed:
            head += ["confirmed IoU", "confirmed ΔIoU"]
        head.append("note")
        lines += ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        for p in presets:
            for r in self.preset_rows(p):
                cells = [r.preset, r.knob, _show(r.value), _num(r.iou), _num(r.delta_iou, sign=True),
                         _num(r.gflops, 3), f"{r.params:,}", str(len(r.plan))]
                if self.confirmed:
                    cells += [_num(r.confirmed_iou), _num(r.confirmed_delta, sign=True)]
                cells.append(r.note)
                lines.append("| " + " | ".join(cells) + " |")
        lines += ["", *(f"- {n}" for n in self.notes), ""] if self.notes else [""]
        return "\n".join(lines)


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def _num(value: float | None, digits: int = 4, *, sign: bool = False) -> str:
    if value is None:
        return "—"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


# --- which rows ---------------------------------------------------------------------------------


def preset_sites(preset: str, searchable: Sequence[Any]) -> list[Any]:
    """The searchable sites a preset replaces: all of them (fullcube), or the decoder's."""
    if preset == "fullcube":
        return list(searchable)
    return [s for s in searchable if s.role == "decoder"]


def plan_rows(space: SearchSpace, searchable: Sequence[Any], presets: Sequence[str],
              knobs: Any = None) -> tuple[list[AblationRow], list[str]]:
    """The rows of each preset (default row first), and notes on what was left out."""
    default = space.default_config()
    changes = knob_values(space, default, knobs)
    rows, notes = [], []
    for preset in presets:
        sites = preset_sites(preset, searchable)
        if not sites:
            notes.append(f"preset {preset}: none of the {len(searchable)} searchable sites is in "
                         "the decoder; no rows")
            continue
        for knob, value in [(DEFAULT, None), *changes]:
            cfg = default if knob == DEFAULT else CubeConfig(**{**default.to_dict(), knob: value})
            plan, kept = {}, []
            for s in sites:
                problem = router_problem(s.in_channels, s.out_channels, cfg)
                if problem is None and cfg not in space.site_combos(s):
                    problem = f"space {space.name!r} does not allow this config there"
                if problem:
                    kept.append(f"{s.name}: {problem}")
                else:
                    plan[s.name] = cfg
            if not plan:
                notes.append(f"preset {preset}, {knob}={_show(value)}: no site of the preset can "
                             f"take it ({kept[0].partition(': ')[2]}); no row")
                continue
            if kept:
                notes.append(f"preset {preset}, {knob}={_show(value)}: kept as conv: "
                             + "; ".join(kept))
            rows.append(AblationRow(preset=preset, knob=knob,
                                    value=cfg.short() if knob == DEFAULT else value, config=cfg,
                                    plan=plan, kept=kept))
    return rows, notes


def parse_presets(preset: str | Sequence[str]) -> list[str]:
    """`all` → both presets; `fullcube` / `decoder` → that one; an error naming `--preset` else."""
    names = [preset] if isinstance(preset, str) else list(preset)
    out: list[str] = []
    for name in names:
        chosen = list(PRESETS) if name == "all" else [name]
        for p in chosen:
            if p not in PRESETS:
                raise CubesearchError(f"--preset {name!r}: unknown preset (choose from "
                                      f"{', '.join(PRESETS)} or all)")
            if p not in out:
                out.append(p)
    return out


# --- the run ------------------------------------------------------------------------------------


def ablate(model: str, *, preset: str | Sequence[str] = "all", knobs: Any = None,
           confirm: bool = False, epochs_per_trial: float = 1.0, map_seed: int | None = None,
           progress: bool = True, log: Callable[[str], None] | None = None,
           console: Console | None = None, **options: Any) -> AblationResult:
    """The one-knob-at-a-time variants of the default config, predicted from the site map.

    `options` are `cubesearch map`'s (`SearchSettings` fields: `out`, `space`, `data`,
    `tile_size`, `train_tiles`, `val_tiles`, `baseline_epochs`, `distill_steps`, `seed`…): the
    same values as a map's or a map search's in the same `out` reuse its trained baseline and
    its cells (map.json); the cells the rows need and map.json lacks are measured and added.
    `knobs` narrows the rows: knob names, `"depth=1,2"` strings or a mapping knob → values.
    `map_seed` (default: `seed`): the cells' own seed, as `cubesearch map --map-seed`.
    `confirm`: also train every row from the baseline for `epochs_per_trial` epochs.
    """
    t0 = time.perf_counter()
    log = log or get_logger(__name__).info
    presets = parse_presets(preset)
    settings = SearchSettings(model=model, budget="100%", strategy="map", **options)
    check_destination(settings.out, option="--out", replaceable=False)
    ctx = build_context(settings)  # no searchable site: an error
    rows, notes = plan_rows(ctx.space, ctx.searchable, presets, knobs)
    if not rows:
        raise CubesearchError(f"--preset {'/'.join(presets)}: no row to score ({notes[0]})"
                              if notes else "nothing to ablate")
    for row in rows:  # priced before anything trains
        cost = plan_cost(ctx, row.plan)
        row.gflops, row.params = float(cost["gflops"]), int(cost["params"])
    sitemap = one_knob_map(ctx, map_seed, console or Console(stderr=True), progress_enabled(progress),
                           log)
    reference = predict_rows(sitemap, rows)
    reference.update(gflops=ctx.base_flops / 1e9, params=int(ctx.base_params))
    outside = sum(1 for r in rows if r.iou is not None and not 0.0 <= r.iou <= 1.0)
    if outside:
        notes.append(f"{outside} of {len(rows)} rows predicted outside [0, 1]: the cells' ΔIoU, "
                     "each measured alone, do not add up over many sites; compare the rows' Δs, "
                     "or train them (--confirm)")
    _deltas(rows, "iou", "delta_iou")
    if confirm:
        _confirm(ctx, epochs_per_trial, rows, reference, log)
        _deltas(rows, "confirmed_iou", "confirmed_delta")
    result = AblationResult(model=model, space=ctx.space.name, default=ctx.space.default_config(),
                            folder=ctx.out, map=sitemap.path, reference=reference, rows=rows,
                            presets=[p for p in presets if any(r.preset == p for r in rows)],
                            conditions=conditions(settings, sitemap, epochs_per_trial if confirm else None),
                            notes=notes, confirmed=confirm, measured=sitemap.measured)
    for p in result.presets:
        result.files.append(atomic_write(ctx.out / f"ablation-{p}.md", result.to_markdown(p)))
    result.seconds = time.perf_counter() - t0
    return result


def one_knob_map(ctx: SearchContext, seed: int | None, console: Console, progress: bool,
                 log: Callable[[str], None]) -> SiteMap:
    """The site map's one-knob subset in OUT (its baseline and cells reused, the rest measured),
    as `site_map` builds it: processes sharing OUT prepare the baseline and the map once."""
    ctx.out.mkdir(parents=True, exist_ok=True)
    with file_lock(ctx.out / ".baseline.lock"):
        prepare_baseline(ctx, progress=progress, log=log)
    with file_lock(ctx.out / ".map.lock"):
        return build_map(ctx, subset=SUBSET, seed=seed, console=console, progress=progress)


def predict_rows(sitemap: SiteMap, rows: Sequence[AblationRow]) -> dict[str, Any]:
    """Each row's IoU: the map's additive prediction of its plan (`MapTable.predict`); returns
    the reference (the baseline's IoU, as every cell was measured against)."""
    table = sitemap.table
    have = {(c["site"], c["option"]) for c in table.cells}
    for row in rows:
        options = {site: cfg.short() for site, cfg in row.plan.items()}
        missing = [f"{s} {o}" for s, o in options.items() if (s, o) not in have]
        if missing:  # plan_rows and the map's one-knob subset agree; never a silent 0
            raise CubesearchError(f"{sitemap.path} has no cell for {missing[0]} (row {row.preset} "
                                  f"{row.label}); move the map away to measure it again")
        row.iou = table.predict(options).predicted_iou
    return {"iou": table.baseline_iou}


def conditions(settings: SearchSettings, sitemap: SiteMap, epochs: float | None) -> dict[str, Any]:
    """The run's conditions, as the table states them."""
    s = settings
    found = {"data": s.data, "tile size": s.tile_size, "train tiles": s.train_tiles,
             "val tiles": s.val_tiles, "baseline epochs": s.baseline_epochs,
             "distillation batches per cell": s.distill_steps,
             "cell seed": sitemap.data.get("seed", s.seed), "seed": s.seed,
             "FLOPs at": "x".join(map(str, s.input_size))}
    if epochs is not None:
        found["epochs per confirmed row"] = epochs
    return found


def _deltas(rows: Sequence[AblationRow], key: str, delta: str) -> None:
    """Each row's `key` minus its preset's default row's (the default row: exactly 0)."""
    base = {r.preset: getattr(r, key) for r in rows if r.knob == DEFAULT}
    for r in rows:
        value, ref = getattr(r, key), base.get(r.preset)
        setattr(r, delta, None if value is None or ref is None else
                (0.0 if r.knob == DEFAULT else value - ref))


def _confirm(ctx: SearchContext, epochs: float, rows: Sequence[AblationRow],
             reference: dict[str, Any], log: Callable[[str], None]) -> None:
    """Train the reference and every row as a search trial from the trained baseline
    (`evaluate_plan`: warm start, the blocks' distillation, `epochs` of fine-tuning) under
    OUT/trials/ablation-Nep; a trial folder already holding the same plan is reused."""
    study = f"{CONFIRM_STUDY}-{epochs:g}ep"
    cctx = dataclasses.replace(ctx, settings=ctx.settings.model_copy(
        update={"study": study, "epochs_per_trial": float(epochs)}))
    trials = ctx.out / "trials" / cctx.settings.study_folder()
    done = _confirmed(trials)
    numbers = [int(p.name.removeprefix("trial_")) for p in trials.glob("trial_*")
               if p.name.removeprefix("trial_").isdigit()]
    next_number = max(numbers, default=-1) + 1
    todo: list[tuple[AblationRow | None, dict[str, CubeConfig], str]] = [
        (None, {}, "unconverted"), *((row, row.plan, f"{row.preset} {row.label}") for row in rows)]
    for i, (row, plan, label) in enumerate(todo, 1):
        key = _plan_key(plan)
        if key in done:
            iou, where = done[key]
            log(f"ablate: confirm {i}/{len(todo)}: {label}: reusing {where} (IoU {iou:.4f})")
        else:
            outcome = evaluate_plan(cctx, dict(plan), next_number)
            iou, where = float(outcome.iou), str(outcome.checkpoint)
            done[key] = (iou, where)
            next_number += 1
            log(f"ablate: confirm {i}/{len(todo)}: {label}: IoU {iou:.4f} ({where})")
        if row is None:
            reference["confirmed_iou"] = iou
        else:
            row.confirmed_iou, row.checkpoint = iou, where


def _plan_key(plan: Mapping[str, CubeConfig]) -> str:
    return json.dumps({n: c.to_dict() for n, c in plan.items()}, sort_keys=True)


def _confirmed(trials: Path) -> dict[str, tuple[float, str]]:
    """Plan key → (IoU, folder) of the confirmed trials already under `trials`."""
    found: dict[str, tuple[float, str]] = {}
    for folder in sorted(trials.glob("trial_*")):
        try:
            plan = json.loads((folder / "plan.json").read_text())
            metrics = json.loads((folder / "metrics.json").read_text())
            sites = {n: CubeConfig.from_dict(c) for n, c in plan["sites"].items()}
            found[_plan_key(sites)] = (float(metrics["iou"]), str(folder))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # an interrupted or foreign folder: trained again under a new number
    return found

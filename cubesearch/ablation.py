"""`cubesearch.ablate(model)`: the paper's ablation tables for the user's model and data.

The paper ablates its block one knob at a time (router none/pre/post, attention on/off, lattice
stride 1/2, depth 1 vs deeper; Tab. 3 and 4), one training per row. Here every row is scored in
the supernet the one-shot search trains (`SupernetEvaluator`, `OUT/supernet/MODEL-HASH`, trained
once and reused), so a table takes minutes:

- presets: `fullcube` (every site the space searches replaced) and `decoder` (the searchable
  sites in the decoder), each with the *default config* (the paper's block, `CubeConfig()`,
  where the space allows its values: `SearchSpace.default_config`) and every config that differs
  from it in one knob, for each value the space allows (`--knob` narrows the knobs and values);
- a row is priced by the cost model (GFLOPs, params; no model built), scored in the supernet
  (IoU on the validation tiles after BatchNorm re-estimation) and compared with its preset's
  default row (ΔIoU); the unconverted model is scored too, as the reference;
- `confirm=True` trains each row (and the reference) as a real trial, as the one-shot search
  confirms its plans (`ConfirmEvaluator`: extracted from the supernet, then fine-tuned by
  `evaluate_plan`), checkpoints under the supernet's folder (`trials/ablation/trial_NNNN`,
  reused by a later run that asks for the same plan);
- a markdown table per preset (`ablation-PRESET.md`) is written in the supernet's folder.

A site where a row's config cannot go (router 'none' needs C_in divisible by 4) keeps its conv in
that row, and the row says so; a row over the supernet's budget says that too (the supernet was
trained on plans within it).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cubesearch.blocks import CubeConfig
from cubesearch.checkpoint import check_destination
from cubesearch.errors import CubesearchError
from cubesearch.helpers import atomic_write, file_lock
from cubesearch.logging import get_logger, progress_enabled
from cubesearch.plan import router_problem
from cubesearch.search.context import SearchContext, build_context
from cubesearch.search.evaluators import SupernetEvaluator, evaluate_plan
from cubesearch.search.objectives import plan_cost
from cubesearch.search.settings import SearchSettings
from cubesearch.space import KNOBS, SearchSpace

PRESETS = ("fullcube", "decoder")
# The paper's axes first (Tab. 4: router, attention; Tab. 3: lattice stride; depth), then the rest.
KNOB_ORDER = ("router", "attention", "lattice_stride", "depth", "groups", "fusion_kernel", "act")
DEFAULT = "default"  # the knob column of a preset's default row
CONFIRM_STUDY = "ablation"  # confirmed rows: SUPERNET/trials/ablation/trial_NNNN


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
    over_budget: bool = False  # above the budget the supernet was trained within
    iou: float | None = None  # supernet score
    delta_iou: float | None = None  # vs the preset's default row
    confirmed_iou: float | None = None  # --confirm: a real trial's IoU
    confirmed_delta: float | None = None
    checkpoint: str | None = None

    @property
    def label(self) -> str:
        return DEFAULT if self.knob == DEFAULT else f"{self.knob}={_show(self.value)}"

    @property
    def note(self) -> str:
        notes = []
        if self.kept:
            notes.append(f"{len(self.kept)} site{'s' if len(self.kept) > 1 else ''} kept as conv")
        if self.over_budget:
            notes.append("over the supernet's budget")
        return "; ".join(notes)

    def to_dict(self) -> dict[str, Any]:
        return {"preset": self.preset, "knob": self.knob, "value": self.value,
                "config": self.config.to_dict(), "sites": len(self.plan), "kept": list(self.kept),
                "gflops": self.gflops, "params": self.params, "over_budget": self.over_budget,
                "iou": self.iou, "delta_iou": self.delta_iou, "confirmed_iou": self.confirmed_iou,
                "confirmed_delta": self.confirmed_delta, "checkpoint": self.checkpoint,
                "note": self.note}


@dataclass
class AblationResult:
    """The rows of every preset, the unconverted reference, and where the tables went."""

    model: str
    space: str
    default: CubeConfig
    supernet: Path  # the supernet's folder (the markdown files are in it)
    reference: dict[str, Any]  # the unconverted model: iou, gflops, params (confirmed_iou)
    rows: list[AblationRow]
    presets: list[str]
    budget: str = ""
    conditions: dict[str, Any] = field(default_factory=dict)  # data, tiles, epochs… of the run
    notes: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    seconds: float = 0.0
    confirmed: bool = False

    def preset_rows(self, preset: str) -> list[AblationRow]:
        return [r for r in self.rows if r.preset == preset]

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "space": self.space, "budget": self.budget,
                "default": self.default.to_dict(), "default_label": self.default.short(),
                "supernet": str(self.supernet), "presets": list(self.presets),
                "reference": dict(self.reference), "rows": [r.to_dict() for r in self.rows],
                "conditions": dict(self.conditions), "notes": list(self.notes),
                "files": [str(f) for f in self.files], "seconds": self.seconds,
                "confirmed": self.confirmed}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str) + "\n"

    def to_markdown(self, preset: str | None = None) -> str:
        """The table of one preset (every preset when None), with the run's conditions."""
        presets = [preset] if preset else list(self.presets)
        ref = self.reference
        lines = [f"# Ablation of {self.model} ({', '.join(presets)})", "",
                 f"One knob of the default config `{self.default.short()}` changed per row, scored "
                 f"in the supernet `{self.supernet}` (space `{self.space}`, budget {self.budget}); "
                 "ΔIoU is against the preset's default row. GFLOPs and params are the cost "
                 "model's.", "",
                 "Conditions: " + ", ".join(f"{k} {_show(v)}" for k, v in self.conditions.items()),
                 "",
                 f"Unconverted model: supernet IoU {_num(ref.get('iou'))}, "
                 f"{_num(ref.get('gflops'), 3)} GFLOPs, {ref.get('params', 0):,} params"
                 + (f", confirmed IoU {_num(ref.get('confirmed_iou'))}" if self.confirmed else "")
                 + ".", ""]
        head = ["preset", "knob", "value", "supernet IoU", "ΔIoU", "GFLOPs", "params", "sites"]
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


def parse_knob(text: str) -> tuple[str, list[Any] | None]:
    """`router` → ("router", None: every value the space allows); `depth=1,2` → ("depth", [1, 2]).
    Values are read as the knob's type (`attention=off`, `groups=2`)."""
    name, eq, values = str(text).partition("=")
    name = name.strip().replace("-", "_")
    if name not in KNOBS:
        raise CubesearchError(f"--knob {text!r}: unknown knob {name!r} (knobs: {', '.join(KNOB_ORDER)})")
    if not eq:
        return name, None
    parsed = [_knob_value(name, v.strip(), text) for v in values.split(",") if v.strip()]
    if not parsed:
        raise CubesearchError(f"--knob {text!r}: no value after '=' (e.g. --knob {name}=...)")
    return name, parsed


def _knob_value(knob: str, raw: str, text: str) -> Any:
    if knob == "attention":
        flags = {"true": True, "on": True, "yes": True, "1": True,
                 "false": False, "off": False, "no": False, "0": False}
        if raw.lower() not in flags:
            raise CubesearchError(f"--knob {text!r}: attention is on or off, not {raw!r}")
        return flags[raw.lower()]
    if knob in ("router", "act"):
        return raw
    try:
        return int(raw)
    except ValueError:
        raise CubesearchError(f"--knob {text!r}: {knob} takes integers, not {raw!r}") from None


def knob_values(space: SearchSpace, default: CubeConfig,
                knobs: Mapping[str, Sequence[Any] | None] | Iterable[str] | None = None
                ) -> list[tuple[str, Any]]:
    """(knob, value) of every row besides the default: each value the space allows that differs
    from the default config's, for the knobs asked (all by default). A value the space does not
    allow is an error naming `--knob`."""
    if knobs is None:
        asked: dict[str, Sequence[Any] | None] = {k: None for k in KNOB_ORDER}
    elif isinstance(knobs, Mapping):
        asked = dict(knobs)
    else:
        asked = dict(parse_knob(k) if isinstance(k, str) else k for k in knobs)
    out = []
    for knob in sorted(asked, key=KNOB_ORDER.index):
        if knob not in KNOBS:
            raise CubesearchError(f"--knob {knob!r}: unknown knob (knobs: {', '.join(KNOB_ORDER)})")
        allowed = list(getattr(space.knobs, knob))
        values = asked[knob]
        if values is not None:
            bad = [v for v in values if v not in allowed or type(v) is not type(allowed[0])]
            if bad:
                raise CubesearchError(
                    f"--knob {knob}={_show(bad[0])}: space {space.name!r} allows {knob} "
                    f"{', '.join(_show(v) for v in allowed)} (the supernet holds only those)")
        chosen = [v for v in (allowed if values is None else values) if v != getattr(default, knob)]
        if not chosen and knobs is not None:
            raise CubesearchError(
                f"--knob {knob}: nothing to ablate: space {space.name!r} allows {knob} "
                f"{', '.join(_show(v) for v in allowed)}, and the default config has "
                f"{_show(getattr(default, knob))}")
        out += [(knob, v) for v in chosen]
    return out


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
           confirm: bool = False, budget: str = "100%", supernet: SupernetEvaluator | None = None,
           progress: bool = True, log: Callable[[str], None] | None = None,
           **options: Any) -> AblationResult:
    """Score the one-knob-at-a-time variants of the default config in the search's supernet.

    `options` are `SearchSettings` fields (`out`, `space`, `data`, `tile_size`, `train_tiles`,
    `epochs_per_trial`, `baseline_epochs`, `supernet_epochs`, `distill_steps`…): the same values
    as a one-shot search's (and the same `budget`, which the supernet is trained within) reuse
    its baseline and supernet. `supernet` is a `SupernetEvaluator` (default: the one-shot
    search's for these settings, `SupernetEvaluator.from_settings`);
    `knobs` narrows the rows: knob names, `"depth=1,2"` strings or a mapping knob → values.
    """
    t0 = time.perf_counter()
    log = log or get_logger(__name__).info
    presets = parse_presets(preset)
    options.setdefault("evaluator", "supernet")
    settings = SearchSettings(model=model, budget=budget, **{"strategy": "trials", **options})
    check_destination(settings.out, option="--out", replaceable=False)
    supernet = supernet or SupernetEvaluator.from_settings(settings)
    ctx = build_context(settings)  # no searchable site: an error
    rows, notes = plan_rows(ctx.space, ctx.searchable, presets, knobs)
    if not rows:
        raise CubesearchError(f"--preset {'/'.join(presets)}: no row to score ({notes[0]})"
                              if notes else "nothing to ablate")
    for row in rows:  # priced before anything trains
        cost = plan_cost(ctx, row.plan)
        row.gflops, row.params = float(cost["gflops"]), int(cost["params"])
        row.over_budget = not cost["feasible"]
    ctx.evaluator = supernet
    ctx.out.mkdir(parents=True, exist_ok=True)
    with file_lock(ctx.out / ".baseline.lock"):  # as the search: processes sharing --out prepare once
        supernet.prepare(ctx, progress=progress_enabled(progress), log=log)
    folder = supernet.folder(ctx)

    def score(number: int, plan: dict[str, CubeConfig]) -> float:
        return float(supernet.evaluate(ctx, ctx.trial_info(number, plan)).iou)

    reference = {"iou": score(0, {}), "gflops": ctx.base_flops / 1e9, "params": int(ctx.base_params)}
    for i, row in enumerate(rows, 1):
        row.iou = score(i, row.plan)
        log(f"ablate: {i}/{len(rows)} scored: {row.preset} {row.label}: IoU {row.iou:.4f}, "
            f"{row.gflops:.3f} GFLOPs")
    _deltas(rows, "iou", "delta_iou")
    if confirm:
        _confirm(ctx, supernet, folder, rows, reference, log)
        _deltas(rows, "confirmed_iou", "confirmed_delta")
    s = settings
    conditions = {"data": s.data, "tile size": s.tile_size, "train tiles": s.train_tiles,
                  "val tiles": s.val_tiles, "baseline epochs": s.baseline_epochs or s.epochs_per_trial,
                  "supernet epochs": supernet.epochs, "seed": s.seed,
                  "FLOPs at": "x".join(map(str, s.input_size))}
    if confirm:
        conditions["epochs per trial"] = s.epochs_per_trial
    result = AblationResult(model=model, space=ctx.space.name, default=ctx.space.default_config(),
                            supernet=folder, reference=reference, rows=rows,
                            presets=[p for p in presets if any(r.preset == p for r in rows)],
                            budget=settings.budget, conditions=conditions, notes=notes,
                            confirmed=confirm)
    for p in result.presets:
        result.files.append(atomic_write(folder / f"ablation-{p}.md", result.to_markdown(p)))
    result.seconds = time.perf_counter() - t0
    return result


def _deltas(rows: Sequence[AblationRow], key: str, delta: str) -> None:
    """Each row's `key` minus its preset's default row's (the default row: exactly 0)."""
    base = {r.preset: getattr(r, key) for r in rows if r.knob == DEFAULT}
    for r in rows:
        value, ref = getattr(r, key), base.get(r.preset)
        setattr(r, delta, None if value is None or ref is None else
                (0.0 if r.knob == DEFAULT else value - ref))


def _confirm(ctx: SearchContext, supernet: SupernetEvaluator, folder: Path, rows: Sequence[AblationRow],
             reference: dict[str, Any], log: Callable[[str], None]) -> None:
    """Train the reference and every row as a real trial, as the one-shot search confirms a plan
    (`ConfirmEvaluator`: extracted from the supernet, fine-tuned by `evaluate_plan`), under
    FOLDER/trials/ablation; a trial folder already holding the same plan is reused."""
    cctx = dataclasses.replace(ctx, out=folder,
                               settings=ctx.settings.model_copy(update={"study": CONFIRM_STUDY}))
    trials = folder / "trials" / CONFIRM_STUDY
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
            start = supernet.extract(ctx, dict(plan))  # from the supernet found under ctx.out
            outcome = evaluate_plan(cctx, dict(plan), next_number, start=start)
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



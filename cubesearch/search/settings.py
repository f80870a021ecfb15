"""`SearchSettings`: a search as validated data (the CLI's options), stored with its study."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cubesearch.core.errors import ConfigError, CubesearchError, validation_message
from cubesearch.cost.budget import budget_objective
from cubesearch.cost.latency.backends import DEFAULT_BACKEND, check_backend
from cubesearch.models.trust import WEIGHT_KWARGS, plain_json
from cubesearch.training import TrainConfig

SAMPLERS = ("nsga2", "tpe", "random")
STRATEGIES = ("trials", "halving", "map")
# The default strategy. Issue 23 chose halving on benchmarks/fidelity.py's τ of rung 3 against
# the mean IoU of the same runs (0.73 vs the 2-epoch trial's 0.67), but rung 3 is read off those
# runs. Across seeds (issue 30: rung 3 from one seed, the other seed's IoU after 8 epochs) rung 3
# ranks at τ 0.61 [95 % CI 0.36, 0.82], the 2-epoch trial at 0.71 [0.32, 0.96]: rung 3 is no
# better than the trial within the intervals (difference −0.11 [−0.44, 0.19], demo model, 11
# plans × 2 seeds). Halving stays the default for what it ships — a front of models trained by
# the final recipe beside their paired baseline — not for a better ranking. Plans scored by
# another evaluator run "trials".
DEFAULT_STRATEGY = "halving"
DEFAULT_RUNGS = (3.0, 9.0)
TRIAL_LR_DIVISOR = 4
DEFAULT_EVALUATOR = "finetune"

# Settings that define a study: resuming with different values would mix incomparable trials.
STUDY_IDENTITY = ("model", "model_kwargs", "space", "budget", "objectives", "input_size", "data",
                  "num_classes", "tile_size", "evaluator", "strategy")
# Settings the trained baseline depends on: studies in one --out that agree on them share it.
BASELINE_IDENTITY = ("model", "model_kwargs", "num_classes", "input_size", "data", "tile_size",
                     "train_tiles", "val_tiles", "batch_size", "lr", "seed", "epochs_per_trial",
                     "baseline_epochs", "pretrained")
# model_kwargs a search sets through its own options (--classes, --input-size, --pretrained)
_OWN_KWARGS = {"num_classes": "--classes", "in_channels": "--input-size (its channels)",
               "pretrained": "--pretrained"}


# Training options a search spells at the top level (the CLI's flags, `search(lr=…)`, records
# older than `training`): they live in `SearchSettings.training`, read back as properties.
TRAINING_OPTIONS = ("lr", "batch_size", "train_tiles", "val_tiles", "distill_steps", "num_classes",
                    "pretrained")
# The search's own defaults for them; every other training option keeps TrainConfig's.
SEARCH_TRAINING: dict[str, Any] = dict(train_tiles=192, val_tiles=64, distill_steps=100, num_classes=1)


def flat(record: Mapping[str, Any]) -> dict[str, Any]:
    """A stored settings record with its training options at the top level, as older records
    have them: what resume checks and exports read."""
    training = record.get("training") or {}
    return {**{k: training[k] for k in TRAINING_OPTIONS if k in training},
            **{k: v for k, v in record.items() if k != "training"}}


# `TrainConfig` fields the final recipe sets itself (`cubesearch.training.finetune.Recipe`), or
# that say how a run shows rather than what it trains: not taken from a study's record.
_NOT_DATA = frozenset({"epochs", "steps", "lr", "new_lr", "kd_weight", "kd_temperature", "keep_best",
                       "patience", "min_lr_ratio", "distill_steps", "progress", "input_size"})


def study_train_options(record: Mapping[str, Any]) -> dict[str, Any]:
    """`train`'s data and task options of a stored search (its data, tiles, seed, batch, loss…):
    what a model of the study trains on when it trains again (`export --finetune`, `finetune`,
    `calibrate`), so its IoU is measured on the search's own validation set."""
    s = flat(record)
    training = {k: v for k, v in (record.get("training") or {}).items()
                if k in TrainConfig.model_fields and k not in _NOT_DATA}
    defaults = TrainConfig().model_dump()
    options = {k: v for k, v in training.items() if v != defaults.get(k)}
    options.update({k: s[k] for k in TRAINING_OPTIONS if k in s and k not in _NOT_DATA})
    size = int(s.get("tile_size", 128))
    channels = int((s.get("input_size") or (3,))[0])
    return {**options, "data": s.get("data", "synthetic"), "input_size": (channels, size, size),
            "seed": int(s.get("seed", 0))}


# Options only some strategies use (a SearchSettings field → who uses it): given to another
# strategy, one is an error naming the strategy that uses it. Under `--strategy auto`, the
# options in AUTO_CHOICE choose the strategy that uses them.
STRATEGY_OPTIONS: dict[str, str] = {
    "epochs_per_trial": "--strategy trials",
    "rungs": "--strategy halving or map",
    "eta": "--strategy halving",
}
# What was retired (issue 31), and why: a strategy or evaluator named here (on the command line or
# in a stored study) is one error line saying so; the retired settings in an older study's
# record are ignored.
RETIRED_WHY = ("was retired: it lost to trials at equal time (hypervolume 0.96x and 0.97x, "
               "benchmarks/results/oneshot-compare*.md) and its supernet ranked plans at Kendall "
               "tau 0.60, the lowest of the signals in benchmarks/results/fidelity.md)")
RETIRED = {"oneshot": f"the one-shot strategy {RETIRED_WHY}; use --strategy halving, trials or map",
           "supernet": f"the supernet evaluator {RETIRED_WHY}; use --evaluator finetune or "
                       "--strategy map (plans predicted from each site scored alone)"}
RETIRED_FIELDS = ("proxy_trials", "supernet_epochs", "supernet_workers")
AUTO_CHOICE = {"epochs_per_trial": "trials", "rungs": "halving", "eta": "halving"}
# A stored record older than `strategy` ran trials (the only strategy there was).
RECORD_DEFAULT_STRATEGY = "trials"


def uses(option: str, strategy: str, evaluator: str | None) -> bool:
    """Whether a search with `strategy` (and `evaluator`) reads `option` (STRATEGY_OPTIONS)."""
    return {"epochs_per_trial": strategy == "trials", "rungs": strategy in ("halving", "map"),
            "eta": strategy == "halving"}.get(option, True)


def option_flag(option: str) -> str:
    return "--" + option.replace("_", "-")


def choose_strategy(data: Mapping[str, Any]) -> str:
    """The strategy named, or under `auto` (None, absent) the one the given options ask for
    (AUTO_CHOICE), else DEFAULT_STRATEGY with cubesearch's trainer and "trials" with another
    evaluator."""
    named = data.get("strategy", "auto")
    if named in RETIRED:
        raise ValueError(f"--strategy {named}: {RETIRED[named]}")
    if named not in (None, "auto", *STRATEGIES):
        raise ValueError(f"--strategy {named!r}: choose auto, {', '.join(STRATEGIES)}")
    if named not in (None, "auto"):
        return named
    asked = {AUTO_CHOICE[k]: k for k in AUTO_CHOICE if k in data}
    if len(asked) > 1:
        flags = " and ".join(f"{option_flag(k)} ({s})" for s, k in asked.items())
        raise ValueError(f"{flags} ask for different strategies; name one with --strategy")
    if asked:
        return next(iter(asked))
    evaluator = data.get("evaluator") or DEFAULT_EVALUATOR
    return DEFAULT_STRATEGY if evaluator == DEFAULT_EVALUATOR else "trials"


def check_strategy_options(data: Mapping[str, Any]) -> None:
    """One error for an option given that the strategy does not use, or an evaluator it cannot
    run: found before the model loads."""
    strategy, evaluator = data["strategy"], data.get("evaluator") or DEFAULT_EVALUATOR
    for option in STRATEGY_OPTIONS:
        if option in data and not uses(option, strategy, evaluator):
            raise ValueError(f"{option_flag(option)} is not used by --strategy {strategy}; it is "
                             f"for {STRATEGY_OPTIONS[option]}")
    if strategy == "halving" and evaluator != DEFAULT_EVALUATOR:
        raise ValueError(f"--evaluator {evaluator}: --strategy halving trains plans rung by rung "
                         "with cubesearch's trainer (--evaluator finetune); other evaluators run "
                         "with --strategy trials")


def record_strategy(record: Mapping[str, Any]) -> str:
    """The strategy a stored search record ran (RECORD_DEFAULT_STRATEGY when it has none)."""
    return record.get("strategy") or RECORD_DEFAULT_STRATEGY


def _from_training(name: str) -> property:
    return property(lambda self: getattr(self.training, name), doc=f"`training.{name}`")


def safe_name(text: str) -> str:
    """`text` with every character but letters, digits and `-_.` replaced by `_`."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


class SearchSettings(BaseModel):
    """A search as data: the CLI's options, stored with the study so a resume can check them."""

    model_config = ConfigDict(extra="forbid")
    model: str
    # The model factory's other keyword arguments (`--model-arg width=32`): plain JSON values,
    # recorded in every plan, so that checkpoints and exports rebuild the same model
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    budget: str
    space: str = "default"
    trials: int = Field(20, ge=1)
    timeout: float | None = None  # seconds
    data: str = "synthetic"
    epochs_per_trial: float = Field(1.0, gt=0)
    baseline_epochs: float | None = None  # defaults to epochs_per_trial (halving: the top rung)
    storage: str | None = None
    study: str | None = None
    out: str = "runs/search"
    seed: int = 0
    objectives: tuple[str, ...] = ("iou", "gflops")
    input_size: tuple[int, int, int] = (3, 512, 512)  # the FLOPs reference input
    tile_size: int = 128  # training tiles
    # How the baseline and every trial train (TrainConfig): lr (the baseline's peak, and that of a
    # trial's new blocks), batch size, synthetic tiles, classes, loss, optimiser, schedule… and
    # distill_steps: before a trial trains end to end, each Cube block is fitted to the conv it
    # replaces (local distillation from the baseline) for this many batches: cheap, and it starts
    # the trial from near the baseline's accuracy instead of from random blocks.
    training: TrainConfig = Field(default_factory=lambda: TrainConfig(**SEARCH_TRAINING))
    # A trial fine-tunes the weights it takes from the trained baseline at a lower peak: at the
    # baseline's own lr, two epochs cost the unchanged model 0.1 of its IoU (0.49 → 0.39 at
    # lr / 4); its Cube blocks are new and train at `lr` (benchmarks/results/trial-lr.md).
    trial_lr: float | None = Field(None, gt=0)  # None: lr / TRIAL_LR_DIVISOR
    sampler: Literal["nsga2", "tpe", "random"] = "nsga2"
    # How a plan becomes an IoU: "finetune" (cubesearch's trainer), or a user function given as
    # `path/to/eval.py:fn` (cubesearch.search.evaluators)
    evaluator: str = DEFAULT_EVALUATOR
    # "trials": every plan the sampler asks for is a trained trial.
    # "halving" (search.halving): successive halving over `rungs` (epochs of the final recipe's
    # schedule at each rung); `trials` plans start, the best 1/`eta` of each rung (MO-ASHA's
    # promotion) train on to the next; the top rung's models are the front
    # "auto" (or None): DEFAULT_STRATEGY with the finetune evaluator, else "trials"
    # "map" (cubesearch.search.sitemap): every site's options scored alone in the baseline (the site
    # map), plans chosen by integer programming, `trials` finalists trained to the top rung
    strategy: Literal["trials", "halving", "map"] = DEFAULT_STRATEGY
    rungs: tuple[float, ...] = DEFAULT_RUNGS
    eta: int = Field(3, ge=2)
    backend: str = "local"  # a name in cubesearch.search.driver.BACKENDS
    # Ray backend (cubesearch.search.ray); ignored by the local one
    address: str | None = None  # auto, HOST:PORT or ray://HOST:PORT; None: a local Ray instance
    max_concurrent: int | None = Field(None, ge=1)  # None: as many as the cluster's CPUs/GPUs fit
    cpus_per_trial: float = Field(1.0, gt=0)
    gpus_per_trial: float = Field(0.0, ge=0)
    # Latency (cubesearch.cost.latency): the table of this device's measured ops (default
    # OUT/latency.json), the runtime they are timed in (torch: eager; ort: ONNX Runtime CPU,
    # `profile --backend`), and whether to measure this device again (another device, or asked)
    latency_table: str | None = None
    latency_backend: str = DEFAULT_BACKEND
    reprofile: bool = False

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:  # one line naming the option (`--trials: …`)
            raise ConfigError(validation_message(exc, known=type(self).model_fields)) from None

    @field_validator("study")
    @classmethod
    def _study(cls, v: str | None) -> str | None:
        """A study name becomes a folder under --out: nothing that could leave it."""
        if v is None:
            return v
        if (not v.strip() or v.strip() in (".", "..") or any(c in v for c in "/\\\0")
                or len(v) > 200):
            raise ValueError(f"--study {v!r}: a study name becomes a folder under --out, so it "
                             "may not be empty, '.' or '..', or hold / or \\ (use letters, digits "
                             "and -_.)")
        return v

    @field_validator("model_kwargs")
    @classmethod
    def _plain_model_kwargs(cls, v: dict[str, Any]) -> dict[str, Any]:
        """Plain JSON values (the study and every plan store them), none that a search option
        sets or that makes the factory read weights from elsewhere."""
        for key, value in v.items():
            shown = f"--model-arg {key}={json.dumps(value, default=str)}"
            if key in _OWN_KWARGS:
                raise ValueError(f"{shown}: the search sets {key} itself; use {_OWN_KWARGS[key]}")
            if key in WEIGHT_KWARGS:
                raise ValueError(f"{shown}: refused (it makes the factory read weights from "
                                 "elsewhere; a search trains from its own baseline)")
            if not plain_json(value):
                raise ValueError(f"{shown}: give a plain JSON value (a number, string, true/false, "
                                 f"null or a list of them), got {type(value).__name__}")
        return dict(v)

    @field_validator("latency_backend")
    @classmethod
    def _latency_backend(cls, v: str) -> str:
        try:
            return check_backend(v, "--latency-backend")
        except CubesearchError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("rungs")
    @classmethod
    def _rising_rungs(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if not v or any(b <= a for a, b in zip(v, v[1:], strict=False)) or v[0] <= 0:
            raise ValueError(f"--rungs {','.join(f'{r:g}' for r in v)}: give rising, positive epochs "
                             "(e.g. 1,3,9)")
        return tuple(float(r) for r in v)

    lr = _from_training("lr")
    batch_size = _from_training("batch_size")
    train_tiles = _from_training("train_tiles")
    val_tiles = _from_training("val_tiles")
    distill_steps = _from_training("distill_steps")
    num_classes = _from_training("num_classes")
    pretrained = _from_training("pretrained")

    @model_validator(mode="before")
    @classmethod
    def _default_strategy(cls, data: Any) -> Any:
        """The strategy: the one named, else (`auto`) the one an option given for it asks for,
        else the evidence's default for cubesearch's trainer (a user function scores every plan
        the sampler asks for: "trials"). An option the strategy does not use
        is an error, never ignored. Halving's baseline trains, unless told, as long as its top
        rung (a map search's too: its finalists train to the top rung). Options given as None
        count as not given (the CLI's unset ones)."""
        if not isinstance(data, dict):
            return data
        data = {k: v for k, v in data.items() if not (k in STRATEGY_OPTIONS and v is None)}
        data["strategy"] = choose_strategy(data)
        check_strategy_options(data)
        if data["strategy"] in ("halving", "map") and data.get("baseline_epochs") is None:
            # the final recipe's teacher and warm start: trained as long as the front trains
            try:
                top = float(max(data.get("rungs") or DEFAULT_RUNGS))
            except (TypeError, ValueError):  # bad rungs: the field's own check says so
                return data
            data = {**data, "baseline_epochs": top}
        return data

    @classmethod
    def from_record(cls, record: Mapping[str, Any], **changes: Any) -> SearchSettings:
        """The settings of a stored study (`study.user_attrs["settings"]`, `search.json`), with
        `changes` over them. A record stores every field, also those its strategy does not use
        (dropped here), and one older than `strategy` ran trials. The settings of a retired
        strategy (RETIRED_FIELDS) are dropped; a study that ran one is a `ConfigError`."""
        strategy = record_strategy(record)
        for name in (strategy, record.get("evaluator")):
            if name in RETIRED:
                raise ConfigError(f"a study of {name!r}: {RETIRED[name]}; its trained models "
                                  "export with the version that ran it")
        kept = {k: v for k, v in record.items() if k not in RETIRED_FIELDS and
                (k not in STRATEGY_OPTIONS or uses(k, strategy, record.get("evaluator")))}
        return cls(**{**kept, "strategy": strategy, **changes})

    @model_validator(mode="before")
    @classmethod
    def _gather_training(cls, data: Any) -> Any:
        """`lr=…`, `batch_size=…` (TRAINING_OPTIONS) given at the top level go into `training`,
        over the search's defaults (SEARCH_TRAINING) and what `training` itself sets."""
        if not isinstance(data, dict) or not ("training" in data or set(TRAINING_OPTIONS) & set(data)):
            return data
        given = data.get("training") or {}
        given = given.model_dump(exclude_unset=True) if isinstance(given, TrainConfig) else dict(given)
        rest = {k: v for k, v in data.items() if k not in TRAINING_OPTIONS}
        return {**rest, "training": {**SEARCH_TRAINING, **given,
                                     **{k: data[k] for k in TRAINING_OPTIONS if k in data}}}

    def check_budget(self) -> str:
        """The cost `--budget` bounds (`gflops` or `latency`); a budget it cannot read is an
        error here, before the model loads (not checked on a stored record: `from_record`)."""
        return budget_objective(self.budget, self.objectives)

    def identity(self, keys: Sequence[str]) -> dict[str, Any]:
        """The settings named by `keys` (training options included), as JSON values; training
        options outside TRAINING_OPTIONS that differ from TrainConfig's defaults come along
        under "training" (a baseline trained with another loss or optimiser is another one)."""
        values = {k: getattr(self, k) for k in keys}
        if not values.get("model_kwargs", True):  # none given: the key of a study older than them
            del values["model_kwargs"]
        extra = self.training.model_dump(mode="json", exclude_defaults=True,
                                         exclude={*TRAINING_OPTIONS, "progress"})
        return json.loads(json.dumps({**values, **({"training": extra} if extra else {})}))

    @property
    def model_args(self) -> dict[str, Any]:
        """Every keyword argument the model is built with (`load_model(model, **model_args)`),
        as a plan records them."""
        return {"num_classes": self.num_classes, "in_channels": self.input_size[0],
                **self.model_kwargs}

    def fine_tune_lr(self, warm_started: bool = True) -> float:
        """Peak learning rate of a trial's warm-started weights (`lr` with nothing to start from)."""
        if self.trial_lr is not None:
            return self.trial_lr
        return self.lr / TRIAL_LR_DIVISOR if warm_started else self.lr

    def study_name(self) -> str:
        return self.study or self._default_study_name()

    def study_folder(self) -> str:
        """The study's name as a folder name (`safe_name`): trials go to OUT/trials/<this>."""
        return safe_name(self.study_name())

    def _default_study_name(self) -> str:
        spec = self.model
        if spec.split(":")[0].endswith(".py"):  # a model file: its stem (and picked name)
            path, _, name = spec.partition(".py")
            spec = Path(path).name + name
        return f"{safe_name(spec)}-{Path(self.space).stem}"

    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{Path(self.out).resolve() / 'study.db'}"

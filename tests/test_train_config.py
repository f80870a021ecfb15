"""`TrainConfig` validation, the optimiser / scheduler tables, the loop's callbacks."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from cubesearch.core.errors import CubesearchError
from cubesearch.training import (
    OPTIMIZERS,
    SCHEDULERS,
    Callback,
    TrainConfig,
    create_optimizer,
    create_scheduler,
    train,
)
from cubesearch.training.data import make_datasets

TINY = str(Path(__file__).parent / "assets" / "tiny_seg.py")


@pytest.mark.parametrize("options, message", [
    (dict(lr=0.0), "--lr must be a positive number, not 0.0"),
    (dict(lr=float("nan")), "--lr must be a positive number, not nan"),
    (dict(batch_size=0), "--batch-size must be at least 1, not 0"),
    (dict(warmup=-1), "--warmup must be ≥ 0"),
    (dict(min_lr_ratio=2), "--min-lr-ratio must be in [0, 1], not 2"),
    (dict(val_split=1.0), "--val-split must be in (0, 1), not 1.0"),
    (dict(steps="many"), "--steps: Input should be a valid integer"),
    (dict(optimizer="lion"), "unknown optimizer 'lion' (choose from adam, adamw, sgd)"),
    (dict(scheduler="step"), "unknown scheduler 'step' (choose from cosine, linear, constant)"),
    (dict(loss="focal"), "unknown loss 'focal' (choose from bce, ce, dice, bce+dice, ce+dice)"),
    (dict(device="gpu9"), "--device 'gpu9' is not a device"),
    (dict(input_size=(3, 32)), "input size (3, 32) is not (C, H, W)"),
    (dict(epochs=1, steps=2), "give --epochs or --steps, not both"),
    (dict(learning_rate=1e-3), "unknown option 'learning_rate' (known: epochs, steps"),
])
def test_bad_values_name_the_option_and_what_it_accepts(options, message):
    with pytest.raises(CubesearchError) as info:
        TrainConfig.build(**options)
    assert str(info.value).startswith(message), str(info.value)


def test_config_defaults_overrides_and_names():
    cfg = TrainConfig.build(optimizer="AdamW", loss="BCE + Dice", device=torch.device("cpu"))
    assert (cfg.optimizer, cfg.loss, cfg.device, cfg.lr, cfg.batch_size) == ("adamw", "bce+dice", "cpu",
                                                                          2e-3, 8)
    again = TrainConfig.build(cfg, lr=1e-3)  # a config with options on top
    assert again.lr == 1e-3 and again.optimizer == "adamw" and cfg.lr == 2e-3
    assert TrainConfig.build(device="auto").device is None
    with pytest.raises(CubesearchError, match="--steps must be at least 1, not 0"):
        TrainConfig(steps=0)  # made directly: the same one-line error


def test_optimizer_table_builds_torch_optimizers():
    params = [torch.nn.Parameter(torch.zeros(2))]
    adam = create_optimizer("adam", params, lr=0.1, weight_decay=0.5)
    assert type(adam) is torch.optim.Adam and adam.defaults["weight_decay"] == 0.5
    adamw = create_optimizer("adamw", params, lr=0.1)
    assert type(adamw) is torch.optim.AdamW and adamw.defaults["weight_decay"] == 1e-2
    sgd = create_optimizer("SGD", params, lr=0.1)
    assert type(sgd) is torch.optim.SGD and sgd.defaults["momentum"] == 0.9 and sgd.defaults["nesterov"]
    groups = create_optimizer("adam", [{"params": params, "lr": 0.3}], lr=0.1).param_groups
    assert groups[0]["lr"] == 0.3
    with pytest.raises(CubesearchError, match="unknown optimizer 'lion'"):
        create_optimizer("lion", params, lr=0.1)
    with pytest.raises(CubesearchError, match="no trainable parameters"):
        create_optimizer("adam", [], lr=0.1)
    assert set(OPTIMIZERS) == {"adam", "adamw", "sgd"}


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_schedules_follow_their_documented_formula(name):
    total, warm, floor, peak = 20, 4, 0.1, 0.5
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=peak)
    sched = create_scheduler(name, opt, total_steps=total, warmup=warm / total, min_lr_ratio=floor)
    seen = []
    for _ in range(total):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    for s, lr in enumerate(seen):
        if s < warm:
            factor = (s + 1) / (warm + 1)
        else:
            p = (s - warm) / (total - warm)
            factor = {"cosine": floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p)),
                      "linear": 1 - (1 - floor) * p, "constant": 1.0}[name]
        assert lr == pytest.approx(peak * factor), (s, lr)


def test_a_custom_callback_sees_every_event_and_the_history():
    class Recorder(Callback):
        def __init__(self) -> None:
            self.events, self.rows, self.history = [], [], None

        def on_fit_start(self, state):
            self.events.append("start")

        def on_step_end(self, state):
            self.events.append(f"step {state.step}")

        def on_evaluate(self, state, row):
            self.rows.append(dict(row))

        def on_fit_end(self, state):
            self.events.append("end")
            self.history = state.history

    data = make_datasets("synthetic", 32, train_tiles=16, val_tiles=8, seed=0)
    recorder = Recorder()
    config = TrainConfig(steps=3, eval_every=2, input_size=(3, 32, 32), progress=False)
    result = train(TINY, data=data, config=config, callbacks=[recorder])
    assert recorder.events == ["start", "step 1", "step 2", "step 3", "end"]
    assert recorder.rows == result.history and [r["step"] for r in recorder.rows] == [2, 3]
    assert recorder.history is result.history
    assert result.metrics["scheduler"] == "cosine" and result.metrics["steps"] == 3


def test_search_settings_hold_one_train_config():
    from cubesearch.search.settings import BASELINE_IDENTITY, SearchSettings, flat

    s = SearchSettings(model="m", budget="50%", lr=1e-3, train_tiles=10)  # flat spellings still work
    assert isinstance(s.training, TrainConfig) and (s.lr, s.training.lr) == (1e-3, 1e-3)
    assert (s.train_tiles, s.val_tiles, s.distill_steps, s.num_classes, s.batch_size) == (10, 64, 100, 1, 8)
    again = SearchSettings.from_record(s.model_dump())  # the stored (nested) record reads back the same
    assert again == s
    old = {"model": "m", "budget": "50%", "lr": 1e-3, "train_tiles": 10}  # a record before `training`
    assert SearchSettings(**old) == s and flat(s.model_dump())["train_tiles"] == 10
    # the baseline's identity is the flat one it always was; other training options join it
    assert s.identity(BASELINE_IDENTITY)["lr"] == 1e-3 and "training" not in s.identity(BASELINE_IDENTITY)
    adamw = SearchSettings(model="m", budget="50%", training=TrainConfig(optimizer="adamw"))
    assert adamw.train_tiles == 192 and adamw.identity(["lr"])["training"] == {"optimizer": "adamw"}
    with pytest.raises(CubesearchError, match="--lr must be a positive number"):
        SearchSettings(model="m", budget="50%", lr=-1)

"""The final recipe: logit distillation, best weights, early stopping, the paired baseline, and
the multi-objective promotion rule of the halving strategy."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from cubesearch.blocks import CubeConfig
from cubesearch.core.errors import CubesearchError
from cubesearch.plan.plan import Plan
from cubesearch.search.promotion import contributions, loss_rows, promote, rung_sizes
from cubesearch.training import train
from cubesearch.training.callbacks import BestWeights
from cubesearch.training.data import make_datasets
from cubesearch.training.finetune import Recipe, baseline_plan, finetune, paired_baseline
from cubesearch.training.losses import distillation_loss

TINY = str(Path(__file__).parent / "assets" / "tiny_seg.py")
FAST = dict(input_size=(3, 32, 32), batch_size=8, progress=False)
RECIPE = Recipe(epochs=2, patience=None, distill_steps=2, kd_weight=1.0)  # the KD path too


@pytest.fixture(scope="module")
def data():
    return make_datasets("synthetic", 32, train_tiles=16, val_tiles=8, seed=0)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, data):
    out = tmp_path_factory.mktemp("ft") / "baseline"
    train(TINY, data=data, steps=4, out=out, **FAST)
    return out


def tiny_plan(sites=("decoder.0.0",)) -> Plan:
    return Plan(model=TINY, model_kwargs={"num_classes": 1, "in_channels": 3}, input_size=(3, 32, 32),
                sites={s: CubeConfig() for s in sites})


# --- the distillation loss ----------------------------------------------------------------------


def test_distillation_loss_matches_its_formula():
    s, t = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    expected = F.binary_cross_entropy_with_logits(s / 2, torch.sigmoid(t / 2)) * 4
    assert torch.allclose(distillation_loss(s, t, 2.0), expected)
    s, t = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    p = torch.softmax(t, 1)
    kl = (p * (torch.log(p) - torch.log_softmax(s, 1))).sum(1).mean()
    assert torch.allclose(distillation_loss(s, t), kl, atol=1e-6)
    assert float(distillation_loss(t, t)) == pytest.approx(0.0, abs=1e-6)  # KL of itself


def test_kd_weight_adds_the_teacher_term_but_records_the_task_loss(data, baseline):
    common = dict(data=data, steps=2, lr=1e-9, init_from=baseline, seed=1, **FAST)
    plain = train(TINY, **common)
    kd = train(TINY, kd_weight=1.0, **common)
    # at lr ≈ 0 the weights barely move: the recorded training loss is the task's in both runs
    assert kd.metrics["train_loss"] == pytest.approx(plain.metrics["train_loss"], rel=1e-4)
    assert kd.metrics["kd_weight"] == 1.0 and "kd_weight" not in plain.metrics
    with pytest.raises(CubesearchError, match="--kd-weight must be ≥ 0"):
        train(TINY, kd_weight=-1, **common)


# --- best weights and early stopping ------------------------------------------------------------


class _Scores:
    """Feeds BestWeights a scripted sequence of validation IoUs."""

    def __init__(self, model, ious):
        self.model, self.ious, self.step, self.num_classes, self.stop = model, list(ious), 0, 1, False
        self.val_metrics: dict = {}
        self.best_step = None

    def run(self, callback):
        for i, iou in enumerate(self.ious, 1):
            self.step = i
            with torch.no_grad():
                next(self.model.parameters()).fill_(float(i))  # the weights of evaluation i
            self.val_metrics = {"iou": iou}
            callback.on_evaluate(self, {})
            if self.stop:
                break
        callback.on_fit_end(self)


def test_best_weights_are_restored_with_their_metrics():
    model = torch.nn.Linear(1, 1)
    state = _Scores(model, [0.2, 0.5, 0.4, 0.3])
    state.run(BestWeights())
    assert state.step == 4 and state.best_step == 2 and state.val_metrics == {"iou": 0.5}
    assert float(model.weight.detach()) == 2.0  # evaluation 2's weights


def test_early_stopping_after_patience_evaluations_without_improvement():
    model = torch.nn.Linear(1, 1)
    state = _Scores(model, [0.2, 0.5, 0.4, 0.45, 0.3, 0.9])
    state.run(BestWeights(patience=2))
    assert state.step == 4 and state.stop  # 0.4 and 0.45 do not beat 0.5: stopped after 4
    assert state.best_step == 2 and float(model.weight.detach()) == 2.0


def test_train_reports_the_best_epoch_and_stops_early(data):
    r = train(TINY, data=data, epochs=6, keep_best=True, patience=1, lr=1e-9, **FAST)
    ious = [h["val_iou"] for h in r.history]
    best = ious.index(max(ious))
    assert r.metrics["iou"] == ious[best] and r.metrics["best_epoch"] == r.history[best]["epoch"]
    assert r.metrics["scheduled_epochs"] == 6.0 and r.metrics["epochs"] == len(ious)
    # patience 1: the run ends one evaluation after its best, or at the schedule's end
    assert r.metrics["stopped_early"] == (len(ious) < 6)
    assert len(ious) == 6 or len(ious) == best + 2


# --- the recipe and the paired baseline ---------------------------------------------------------


def test_recipe_options_and_key():
    opts = Recipe().train_options(converted=True)
    assert opts["min_lr_ratio"] == 0.0 and opts["keep_best"] and opts["kd_weight"] == 0  # kd-ablation
    assert opts["new_lr"] > opts["lr"]
    assert Recipe().train_options(converted=False)["distill_steps"] == 0
    assert Recipe().key(seed=0) == Recipe().key(seed=0) != Recipe(epochs=3).key(seed=0)
    assert Recipe().key(seed=0) != Recipe().key(seed=1)


def test_finetune_pairs_the_plan_with_the_baseline_trained_alike(data, baseline, tmp_path):
    done = finetune(tiny_plan(), baseline, recipe=RECIPE, data=data, paired_cache=tmp_path,
                    proxy_iou=0.1, **FAST)
    s = done.summary()
    assert s["final_iou"] == done.result.metrics["iou"] and s["proxy_iou"] == 0.1
    assert s["paired_baseline_iou"] == done.paired["iou"]
    assert s["delta_iou_vs_paired"] == pytest.approx(s["final_iou"] - s["paired_baseline_iou"])
    assert done.result.metrics["distill_steps"] == 2 and done.result.metrics["epochs"] == 2.0
    # the paired baseline ran the same recipe on the same data and seed, and is cached by it
    assert done.paired["epochs"] == 2.0 and done.paired["kd_weight"] == RECIPE.kd_weight
    stored = json.loads((tmp_path / "paired.json").read_text())
    assert stored["metrics"]["iou"] == done.paired["iou"]
    stored["metrics"]["iou"] = 0.123  # a cached result is reused while the key matches…
    (tmp_path / "paired.json").write_text(json.dumps(stored))
    assert paired_baseline(baseline, recipe=RECIPE, data=data, cache=tmp_path, **FAST)["iou"] == 0.123
    again = paired_baseline(baseline, recipe=RECIPE, seed=1, data=data, cache=tmp_path, **FAST)
    assert again["iou"] != 0.123 and again["seed"] == 1  # …and recomputed when it does not


def test_baseline_must_be_an_unconverted_checkpoint(tmp_path, baseline, data):
    with pytest.raises(CubesearchError, match="--baseline .*: not a checkpoint folder"):
        baseline_plan(tmp_path)
    converted = tmp_path / "converted"
    train(TINY, plan=tiny_plan(), data=data, steps=1, out=converted, **FAST)
    with pytest.raises(CubesearchError, match="a converted model; give the trained, unconverted"):
        baseline_plan(converted)
    assert baseline_plan(baseline).sites == {}


def test_a_continued_converted_model_keeps_the_block_learning_rate(data, baseline):
    start = train(TINY, plan=tiny_plan(), data=data, steps=1, init_from=baseline, **FAST).model
    seen = {}

    class Grab:
        def on_fit_start(self, state):
            seen["groups"] = [(g["initial_lr"], len(g["params"])) for g in state.optimizer.param_groups]

    train(start, plan=tiny_plan(), data=data, steps=1, lr=1e-4, new_lr=1e-3, callbacks=[Grab()], **FAST)
    (base_lr, n_base), (block_lr, n_block) = seen["groups"]
    block_params = [n for n, _ in start.named_parameters() if n.startswith("decoder.0.0.")]
    assert (base_lr, block_lr) == (1e-4, 1e-3) and n_block == len(block_params) > 0
    assert n_base == len(list(start.parameters())) - n_block


# --- MO-ASHA promotion --------------------------------------------------------------------------


def test_promotion_takes_whole_fronts_then_hypervolume_contribution():
    ious = [0.9, 0.8, 0.5, 0.7, 0.85]
    costs = [10.0, 5.0, 1.0, 9.0, 6.0]
    losses = loss_rows(ious, costs)
    # front: 0 (0.9, 10), 1 (0.8, 5), 2 (0.5, 1), 4 (0.85, 6); 3 (0.7, 9) is dominated by 1
    assert sorted(promote(losses, 4)) == [0, 1, 2, 4]
    assert 3 not in promote(losses, 4) and promote(losses, 5)[-1] == 3
    ref = np.array([0.0, 11.0])
    gains = contributions(losses[[0, 1, 2, 4]], ref)
    expect_first = [0, 1, 2, 4][int(np.argmax(gains))]
    assert promote(losses, 1, ref) == [expect_first]
    assert promote(losses, 0) == [] and promote(np.zeros((0, 2)), 3) == []
    # the exclusive contribution of a point is the area only it covers
    two = loss_rows([0.5, 0.8], [1.0, 2.0])
    c = contributions(two, np.array([0.0, 3.0]))
    assert c[0] == pytest.approx((3 - 1) * 0.5 - (3 - 2) * 0.5) and c[1] == pytest.approx(0.3 * 1)
    assert rung_sizes(27, 3, 3) == [27, 9, 3] and rung_sizes(4, 3, 3) == [4, 1, 1]
    assert math.isfinite(float(c.sum()))


# --- the from-scratch mode (the paper's protocol) -------------------------------------------------


def test_from_scratch_starts_from_fresh_weights_not_the_baseline(baseline):
    from cubesearch.plan.checkpoint import load
    from cubesearch.training.finetune import fresh_model

    trained = load(baseline).state_dict()
    model = fresh_model(tiny_plan(), baseline, seed=0)
    assert not isinstance(model.get_submodule("decoder.0.0"), torch.nn.Conv2d)  # converted: a block
    fresh = model.state_dict()
    shared = [k for k in fresh if k in trained and trained[k].dtype.is_floating_point
              and "running" not in k and fresh[k].numel() > 1]
    assert shared and all(not torch.equal(fresh[k], trained[k]) for k in shared)
    again = fresh_model(tiny_plan(), baseline, seed=0).state_dict()
    other = fresh_model(tiny_plan(), baseline, seed=1).state_dict()
    assert all(torch.equal(fresh[k], again[k]) for k in fresh)  # the seed fixes the init
    assert any(not torch.equal(fresh[k], other[k]) for k in shared)


def test_from_scratch_trains_both_arms_from_scratch_with_the_same_settings(data, baseline, tmp_path):
    scratch = Recipe(epochs=1, patience=None, from_scratch=True)
    done = finetune(tiny_plan(), baseline, recipe=scratch, data=data, paired_cache=tmp_path, **FAST)
    m, p = done.result.metrics, done.paired
    assert "init_source" not in m and "init_source" not in p  # nothing loaded into either arm
    assert "distill_steps" not in m  # no block fitted to a trained conv
    assert m["lr"] == p["lr"] == scratch.block_lr and m["epochs"] == p["epochs"] == 1.0
    assert m["steps"] > 0 and math.isfinite(m["iou"]) and math.isfinite(p["iou"])
    # the paired baselines are cached under different keys: one mode never reuses the other's
    assert Recipe(from_scratch=True).key() != Recipe().key()

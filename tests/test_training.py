"""The trainer: determinism, budgets, losses, NaN handling, warm start, distillation, checkpoints."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from cubesearch.blocks import CubeConfig
from cubesearch.core.errors import CubesearchError
from cubesearch.training import (
    TrainingDiverged,
    cosine,
    distill,
    evaluate,
    load_init,
    logits_of,
    make_loss,
    param_groups,
    train,
)
from cubesearch.training.data import make_datasets

TINY = str(Path(__file__).parent / "assets" / "tiny_seg.py")


@pytest.fixture(scope="module")
def data():
    return make_datasets("synthetic", 32, train_tiles=16, val_tiles=8, seed=0)


def tiny(num_classes: int = 1) -> nn.Module:
    from cubesearch.models.load import load_model

    return load_model(TINY, num_classes=num_classes)


def plan_for(sites=(), insertions=()):
    from cubesearch.plan.plan import Plan

    return Plan(model=TINY, model_kwargs={"num_classes": 1, "in_channels": 3}, input_size=(3, 32, 32),
                sites={s: CubeConfig() for s in sites}, insertions={s: CubeConfig() for s in insertions})


FAST = dict(input_size=(3, 32, 32), batch_size=8, progress=False)


# --- determinism and budgets ----------------------------------------------------------------


def test_two_runs_with_one_seed_are_identical(data):
    a = train(TINY, data=data, steps=4, seed=3, **FAST)
    b = train(TINY, data=data, steps=4, seed=3, **FAST)
    for key in ("iou", "f1", "oa", "loss", "train_loss", "tp", "fp"):
        assert a.metrics[key] == b.metrics[key], key
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k
    c = train(TINY, data=data, steps=4, seed=4, **FAST)
    assert c.metrics["train_loss"] != a.metrics["train_loss"]


def test_training_leaves_the_global_rng_alone(data):
    model = tiny()  # building it draws from the global RNG; training must not
    state = torch.get_rng_state()
    train(model, data=data, steps=1, **FAST)
    assert torch.equal(state, torch.get_rng_state())


def test_learns_on_synthetic_tiles():
    torch.manual_seed(0)
    train_ds, val_ds = make_datasets("synthetic", 64, train_tiles=64, val_tiles=16, seed=1)
    model = tiny()
    before = evaluate(copy.deepcopy(model), val_ds)
    result = train(model, data=(train_ds, val_ds), epochs=3, input_size=(3, 64, 64), progress=False)
    h = result.history
    assert len(h) == 3 and [r["epoch"] for r in h] == [1.0, 2.0, 3.0]
    assert h[-1]["train_loss"] < h[0]["train_loss"]
    assert result.metrics["loss"] < before["loss"]
    assert result.metrics["iou"] > max(before["iou"], 0.15)
    assert result.metrics["images_per_second"] > 0 and not result.model.training


def test_budget_in_steps_epochs_and_eval_points(data):
    r = train(tiny(), data=data, steps=3, **FAST)
    assert r.metrics["steps"] == 3 and len(r.history) == 1 and r.history[0]["step"] == 3
    r = train(tiny(), data=data, steps=3, eval_every=1, **FAST)
    assert [h["step"] for h in r.history] == [1, 2, 3]
    r = train(tiny(), data=data, epochs=0.5, **FAST)  # 16 tiles, batch 8: 2 steps per epoch
    assert r.metrics["steps"] == 1 and r.metrics["epochs"] == 0.5
    r = train(tiny(), data=data, epochs=1.5, **FAST)
    assert r.metrics["steps"] == 3 and [h["step"] for h in r.history] == [2, 3]


def test_small_dataset_shrinks_the_batch(data):
    train_ds, val_ds = make_datasets("synthetic", 32, train_tiles=3, val_tiles=2)
    r = train(tiny(), data=(train_ds, val_ds), epochs=1, **FAST)
    assert r.metrics["batch_size"] == 3 and r.metrics["steps"] == 1


def test_cosine_schedule_with_warmup():
    total, warm = 100, 10
    f = [cosine(s, total, warm, 0.01) for s in range(total)]
    assert f[0] == pytest.approx(1 / 11) and f[9] == pytest.approx(10 / 11)
    assert f[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:], strict=False))
    mid = 10 + 45
    assert f[mid] == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert cosine(total, total, warm, 0.01) == pytest.approx(0.01)


def test_learning_rate_follows_the_schedule(data):
    r = train(tiny(), data=data, steps=4, eval_every=1, lr=1e-2, warmup=0.0, **FAST)
    lrs = [h["lr"] for h in r.history]  # the lr set for the step after each
    assert lrs == pytest.approx([1e-2 * cosine(s, 4, 0) for s in (1, 2, 3, 4)])


def test_optimizers_and_losses_run(data):
    for opt in ("adam", "adamw", "sgd"):
        assert math.isfinite(train(tiny(), data=data, steps=1, optimizer=opt, **FAST).metrics["loss"])
    for loss in ("dice", "bce+dice"):
        r = train(tiny(), data=data, steps=1, loss=loss, **FAST)
        assert r.metrics["loss_fn"] == loss and math.isfinite(r.metrics["loss"])


# --- losses -----------------------------------------------------------------------------------


def test_bce_loss_matches_torch_and_skips_ignored_pixels():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 1, 4, 4, generator=g)
    target = (torch.rand(2, 4, 4, generator=g) > 0.5).long()
    bce = make_loss("bce", 1)
    assert bce(logits, target) == pytest.approx(
        float(F.binary_cross_entropy_with_logits(logits[:, 0], target.float())))
    ignored = target.clone()
    ignored[0, 0] = 255
    keep = ignored != 255
    assert bce(logits, ignored) == pytest.approx(
        float(F.binary_cross_entropy_with_logits(logits[:, 0][keep], target[keep].float())), rel=1e-5)


def test_dice_loss_values():
    dice = make_loss("dice", 1)
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    target[0, :2] = 1
    perfect = (target.float() * 40 - 20)[:, None]
    assert float(dice(perfect, target)) == pytest.approx(0.0, abs=1e-6)
    half = torch.zeros(1, 1, 4, 4)  # p = 0.5 everywhere: 1 − (2·4 + 1) / (8 + 8 + 1)
    assert float(dice(half, target)) == pytest.approx(1 - 9 / 17)
    both = make_loss("bce+dice", 1)
    assert float(both(half, target)) == pytest.approx(math.log(2) + 1 - 9 / 17, rel=1e-5)


def test_multiclass_losses():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 4, 4, generator=g)
    target = torch.randint(0, 3, (2, 4, 4), generator=g)
    target[0, 0, 0] = 255
    ce = make_loss("ce", 3)
    assert float(ce(logits, target)) == pytest.approx(
        float(F.cross_entropy(logits, target, ignore_index=255)))
    assert float(make_loss("bce", 3)(logits, target)) == pytest.approx(float(ce(logits, target)))
    onehot = F.one_hot(torch.where(target == 255, 0, target), 3).permute(0, 3, 1, 2).float()
    assert float(make_loss("dice", 3)(onehot * 50, target)) == pytest.approx(0.0, abs=1e-4)
    with pytest.raises(CubesearchError, match="unknown loss 'focal'"):
        make_loss("focal", 1)


def test_multiclass_training_reports_per_class_iou():
    train_ds, val_ds = make_datasets("synthetic", 32, train_tiles=8, val_tiles=4, num_classes=4)
    r = train(tiny(num_classes=4), data=(train_ds, val_ds), steps=2, **FAST)
    assert len(r.metrics["iou_per_class"]) == 4 and r.metrics["iou"] == r.metrics["miou"]
    assert r.metrics["num_classes"] == 4


# --- failures -----------------------------------------------------------------------------------


class NaNModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 3, padding=1)
        with torch.no_grad():
            self.conv.bias.fill_(float("nan"))

    def forward(self, x):
        return self.conv(x)


def test_nan_loss_stops_the_run(data):
    with pytest.raises(TrainingDiverged, match=r"loss became nan at step 1 of 2 .*lower --lr"):
        train(NaNModel(), data=data, steps=2, **FAST)


def test_diverging_learning_rate_is_caught(data):
    class Exploding(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.ones(1))

        def forward(self, x):
            return x[:, :1] * self.w * 1e10

    # Adam moves w by about lr per step whatever the gradient's size: after a few steps the
    # logits (normalised pixels × w × 1e10 ≈ ±1e38…) overflow fp32.
    with pytest.raises(TrainingDiverged, match="loss became (nan|inf)"):
        train(Exploding(), data=data, steps=6, lr=1e28, **FAST)


def test_output_shape_checks(data):
    class Classifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 5)

        def forward(self, x):
            return self.fc(x.mean((2, 3)))

    with pytest.raises(CubesearchError, match=r"returns shape \(8, 5\), not \(B, K, H, W\)"):
        train(Classifier(), data=data, steps=1, **FAST)
    with pytest.raises(CubesearchError, match=r"outputs 2 channel\(s\) but the task has 1 class"):
        train(tiny(num_classes=2), data=data, steps=1, **FAST)


def test_low_resolution_outputs_are_upsampled(data):
    class Quarter(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 1, 3, stride=4, padding=1)

        def forward(self, x):
            return {"out": self.conv(x)}

    assert math.isfinite(train(Quarter(), data=data, steps=1, **FAST).metrics["iou"])
    assert logits_of((torch.zeros(1, 2, 4, 4),), (8, 8)).shape == (1, 2, 8, 8)


@pytest.mark.parametrize("kwargs, message", [
    (dict(epochs=1, steps=2), "not both"),
    (dict(steps=0), "at least 1"),
    (dict(epochs=-1), "must be positive"),
    (dict(steps=1, batch_size=0), "--batch-size"),
    (dict(steps=1, lr=-1.0), "--lr must be a positive"),
    (dict(steps=1, new_lr=0.0), "--new-lr must be a positive"),
    (dict(steps=1, loss="l2"), "unknown loss"),
    (dict(steps=1, optimizer="lion"), "unknown optimizer"),
    (dict(steps=1, input_size=(3, 32, 16)), "square"),
    (dict(steps=1, num_classes=3), "--classes 3 but the model was built for 1"),
    (dict(steps=1, distill_steps=2), "nothing to distil|needs a trained baseline"),
])
def test_bad_arguments(kwargs, message, data):
    opts = {**FAST, **kwargs}
    with pytest.raises(CubesearchError, match=message):
        train(TINY, data=data, plan=plan_for() if "num_classes" in kwargs else None, **opts)


# --- evaluation ---------------------------------------------------------------------------------


def test_evaluate_an_all_background_model(data):
    class Nothing(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bias = nn.Parameter(torch.tensor(-10.0))

        def forward(self, x):
            return torch.zeros_like(x[:, :1]) + self.bias

    _, val = data
    r = evaluate(Nothing(), val)
    positives = sum(int((val[i][1] == 1).sum()) for i in range(len(val)))
    total = len(val) * 32 * 32
    assert (r["tp"], r["fp"], r["fn"]) == (0, 0, positives)
    assert r["oa"] == pytest.approx(1 - positives / total) and r["iou"] == 0.0
    assert r["loss"] == pytest.approx(10.0 * positives / total, rel=1e-3)


def test_channels_last_matches_contiguous(data):
    a = train(TINY, data=data, steps=2, channels_last=True, **FAST)
    b = train(TINY, data=data, steps=2, channels_last=False, **FAST)
    assert a.metrics["train_loss"] == pytest.approx(b.metrics["train_loss"], abs=1e-4)
    assert a.model(torch.zeros(1, 3, 32, 32)).is_contiguous()


# --- warm start, distillation ---------------------------------------------------------------------


def test_warm_start_loads_matching_tensors(data, tmp_path):
    base = train(TINY, data=data, steps=3, **FAST).model
    fresh = tiny()
    report = load_init(fresh, base.state_dict())
    assert report["loaded"] == report["total"] == len(base.state_dict()) and report["missing"] == 0
    for k, v in base.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v)
    # a converted model: every tensor but the replaced conv's comes from the baseline
    from cubesearch.plan.conversion import convert

    converted = convert(tiny(), plan_for(["decoder.0.0"]))
    report = load_init(converted, base)
    assert report["shape_mismatch"] == 0 and report["unexpected"] == 1  # decoder.0.0.weight
    assert report["loaded"] == len(base.state_dict()) - 1
    assert report["missing"] == report["total"] - report["loaded"] > 0
    assert all(n.startswith("decoder.0.0.") for n in report["missing_names"])
    # from files
    torch.save({"state_dict": base.state_dict()}, tmp_path / "w.pt")
    assert load_init(tiny(), tmp_path / "w.pt")["loaded"] == report["total"] - report["missing"] + 1
    torch.save({f"module.{k}": v for k, v in base.state_dict().items()}, tmp_path / "dp.pt")
    assert load_init(tiny(), tmp_path / "dp.pt")["loaded"] == len(base.state_dict())
    with pytest.raises(CubesearchError, match="none of its .* tensors matches"):
        load_init(tiny(), {"other.weight": torch.zeros(2)})
    with pytest.raises(CubesearchError, match="no such file or folder"):
        load_init(tiny(), tmp_path / "missing.safetensors")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(CubesearchError, match="cannot read weights"):
        load_init(tiny(), tmp_path / "junk.pt")


def test_train_with_init_reports_the_counts(data):
    base = train(TINY, data=data, steps=3, **FAST).model
    r = train(TINY, plan=plan_for(["decoder.0.0"]), data=data, steps=1, init_from=base, **FAST)
    assert r.init["loaded"] == len(base.state_dict()) - 1
    assert r.metrics["init_loaded"] == r.init["loaded"] and r.metrics["init_total"] > r.init["loaded"]


def test_new_parameters_train_at_their_own_learning_rate(data):
    """A warm-started model fine-tunes what it loaded at `lr` and its new blocks at `new_lr`."""
    base = train(TINY, data=data, steps=2, **FAST).model
    model = tiny()
    from cubesearch.plan.conversion import convert

    model = convert(model, plan_for(["decoder.0.0"]))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    r = train(model, plan=plan_for(["decoder.0.0"]), data=data, steps=1, init_from=base,
              optimizer="sgd", lr=1e-30, new_lr=0.5, warmup=0, min_lr_ratio=1.0, **FAST)
    new = [n for n in before if n.startswith("decoder.0.0.")]
    assert new and r.metrics["lr"] == 1e-30 and r.metrics["new_lr"] == 0.5
    loaded = base.state_dict()
    for n, p in r.model.named_parameters():
        if n in new:
            assert not torch.equal(p.detach(), before[n]), n  # the block moved at 0.5 …
        else:
            torch.testing.assert_close(p.detach(), loaded[n], rtol=0, atol=1e-12)  # … the rest did not
    groups = param_groups(r.model, 1e-3, 4e-3, r.init)
    assert [g["lr"] for g in groups] == [1e-3, 4e-3]
    assert sum(len(g["params"]) for g in groups) == len(list(r.model.parameters()))
    assert [g["lr"] for g in param_groups(r.model, 1e-3, None, r.init)] == [1e-3]


def batch_stream(dataset, n=8):
    from cubesearch.training import Inputs

    inputs = Inputs(3, torch.device("cpu"), False)
    images = torch.stack([dataset[i][0] for i in range(n)])
    masks = torch.stack([dataset[i][1] for i in range(n)])
    return lambda: inputs(images, masks)[0]


def test_distillation_fits_blocks_to_the_convs_they_replace(data):
    from cubesearch.plan.conversion import convert

    teacher = train(TINY, data=data, steps=3, **FAST).model
    plan = plan_for(["decoder.0.0", "encoder.3.0"])
    student = convert(teacher, plan)
    load_init(student, teacher)
    batches = batch_stream(data[0])
    report = distill(student, teacher, list(plan.sites), batches, 60, lr=2e-2,
                     device=torch.device("cpu"))
    assert report["blocks"] == 2 and report["steps"] == 60
    assert report["loss_end"] < 0.5 * report["loss_start"]
    # measured independently: the block now imitates the conv on the teacher's activations
    x = batches()
    seen = {}
    handle = teacher.decoder[0][0].register_forward_hook(lambda m, a, o: seen.update(i=a[0], o=o))
    with torch.no_grad():
        teacher.eval()(x)
        block = student.get_submodule("decoder.0.0").eval()
        err = F.mse_loss(block(seen["i"]), seen["o"]) / seen["o"].var()
    handle.remove()
    assert float(err) < 0.6


def test_distillation_of_an_insertion_drives_the_block_to_zero(data):
    from cubesearch.plan.conversion import convert

    teacher = tiny()
    plan = plan_for(insertions=["encoder.1"])
    student = convert(teacher, plan)
    load_init(student, teacher)
    report = distill(student, teacher, [], batch_stream(data[0]), 40, insertions=["encoder.1"],
                     lr=3e-3, device=torch.device("cpu"))
    assert report["loss_end"] < 0.5 * report["loss_start"]


def test_train_with_distill_steps(data, tmp_path):
    from cubesearch.plan.checkpoint import save

    base = train(TINY, data=data, steps=2, **FAST)
    save(tmp_path / "baseline", base.model, base.plan, base.metrics)
    r = train(TINY, plan=plan_for(["decoder.0.0"]), data=data, steps=1, distill_steps=3,
              init_from=tmp_path / "baseline", **FAST)
    assert r.distill["steps"] == 3 and r.metrics["distill_steps"] == 3
    assert r.metrics["init_loaded"] == len(base.model.state_dict()) - 1
    # a baseline checkpoint folder given as the model, with a plan: converted + warm-started
    r2 = train(str(tmp_path / "baseline"), plan=plan_for(["decoder.0.0"]), data=data, steps=1, **FAST)
    assert r2.init["loaded"] == r.metrics["init_loaded"]
    with pytest.raises(CubesearchError, match="is not in both"):
        distill(tiny(), tiny(), ["encoder.9"], batch_stream(data[0]), 1, device=torch.device("cpu"))


# --- checkpoints ----------------------------------------------------------------------------------


def test_checkpoint_round_trip(data, tmp_path):
    from cubesearch.plan.checkpoint import load

    r = train(TINY, data=data, steps=2, out=tmp_path / "ck", **FAST)
    names = {p.name for p in (tmp_path / "ck").iterdir()}
    assert {"plan.json", "model.safetensors", "metrics.json"} <= names
    loaded = load(tmp_path / "ck")
    again = evaluate(loaded, data[1])
    assert again["iou"] == pytest.approx(r.metrics["iou"]) and again["tp"] == r.metrics["tp"]
    # the folder is itself a MODEL: training continues from its weights
    r2 = train(str(tmp_path / "ck"), data=data, steps=1, **FAST)
    assert r2.plan.model == TINY


def test_module_without_plan_cannot_be_saved(data, tmp_path):
    with pytest.raises(CubesearchError, match="needs the model's plan"):
        train(tiny(), data=data, steps=1, out=tmp_path / "x", **FAST)


def test_folder_dataset_training(tmp_path):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(4):
        img = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
        mask = np.zeros((48, 48), np.uint8)
        mask[10:30, 5:25] = 255
        (tmp_path / "ds" / "images").mkdir(parents=True, exist_ok=True)
        (tmp_path / "ds" / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(tmp_path / "ds" / "images" / f"{i}.png")
        Image.fromarray(mask).save(tmp_path / "ds" / "masks" / f"{i}.png")
    r = train(TINY, data=str(tmp_path / "ds"), steps=2, val_split=0.25, **FAST)
    assert r.metrics["val_tiles"] == 4 and r.metrics["pixels"] == 48 * 48

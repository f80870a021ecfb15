"""`cubesearch.train`: train and evaluate a segmentation model (the search scores every trial
with it, users train the winner with it).

- Model: an `nn.Module`, a model spec (`timm:…`, `smp:ARCH:ENCODER`, `model.py`), optionally
  converted by a `Plan`, or a converted / exported checkpoint folder.
- Data: `"synthetic"` (embedded), a dataset folder, or a (train, val) pair of datasets.
- Task: binary (1 output channel, sigmoid, BCE by default) or K ≥ 2 classes (softmax, CE);
  Dice or BCE+Dice optional. Adam (the paper's) or AdamW, linear warmup then cosine decay.
- Budget: `epochs` (fractions allowed) or `steps`. Deterministic under `seed` (model init,
  data order and augmentations); AMP (bf16, else fp16 with a scaler) and channels_last on CUDA,
  channels_last on CPU too (1.7× faster for smp U-Nets here).
- Metrics (`cubesearch.metrics`): OA, precision, recall, F1, IoU of the building class over the
  whole validation set, and the loss. A NaN/inf loss stops the run with `TrainingDiverged`.
- Warm start (`init_from`): every tensor whose name and shape match is loaded (strict=False)
  and the counts are reported; with `distill_steps`, each replaced site is first fitted to
  reproduce the output of the conv it replaces (local distillation on teacher activations).
- Checkpoint (`out`): `cubesearch.checkpoint.save` → safetensors + plan + metrics JSON.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from cubesearch.data.transforms import IGNORE_INDEX, normalization
from cubesearch.errors import CubesearchError, one_line
from cubesearch.metrics import SegmentationMetrics

LOSSES = ("bce", "ce", "dice", "bce+dice", "ce+dice")
OPTIMIZERS = ("adam", "adamw", "sgd")
DEFAULT_LR = 2e-3  # works from scratch for short budgets with Adam (see README)
DEFAULT_BATCH = 8
DEFAULT_EPOCHS = 5

__all__ = ["TrainResult", "TrainingDiverged", "evaluate", "load_init", "train"]


BN_RECALIBRATION_BATCHES = 8  # batches to re-estimate BatchNorm statistics after distillation


class TrainingDiverged(CubesearchError):
    """The loss became NaN or infinite: the run stops rather than report a metric."""


@dataclass
class TrainResult:
    """What `train` returns: the trained model (eval mode, on the device it came from), the final
    validation metrics, one history row per evaluation, and where the checkpoint went."""

    model: nn.Module
    metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    out_dir: Path | None = None
    plan: Any = None
    init: dict[str, Any] | None = None
    distill: dict[str, Any] | None = None


# --- model output, loss ---------------------------------------------------------------------


def logits_of(output: Any, size: tuple[int, int]) -> torch.Tensor:
    """The (B, K, H, W) logits in a model's output (tensor, dict with 'out', tuple), resized to
    the input's H×W when the model predicts at a lower resolution."""
    out = output
    if isinstance(out, dict):
        out = out.get("out", next(iter(out.values()), None))
    if isinstance(out, (tuple, list)):
        out = out[0] if out else None
    if not isinstance(out, torch.Tensor):
        raise CubesearchError(f"the model returned {type(output).__name__}, not a tensor of logits")
    if out.dim() != 4:
        raise CubesearchError(
            f"the model returns shape {tuple(out.shape)}, not (B, K, H, W) segmentation logits "
            "(a classifier? use a segmentation model such as smp:Unet:resnet18)")
    if tuple(out.shape[-2:]) != tuple(size):
        out = F.interpolate(out, size=size, mode="bilinear", align_corners=False)
    return out


def _valid_mean(values: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    if valid is None:
        return values.mean()
    return (values * valid).sum() / valid.sum().clamp_min(1)


def make_loss(name: str, num_classes: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """loss(logits (B, K, H, W), target (B, H, W) long with 255 = ignore) → scalar.

    `bce`: binary cross-entropy for K = 1 (the paper's), cross-entropy (softmax) for K ≥ 2 (`ce`
    is the same); `dice`: soft Dice (1 − 2|P∩T| / (|P| + |T|), smoothed by 1) over the batch,
    per class for K ≥ 2; `bce+dice`: their sum."""
    name = name.lower().replace(" ", "")
    if name not in LOSSES:
        raise CubesearchError(f"unknown loss {name!r} (choose from {', '.join(LOSSES)})")
    parts = name.split("+")

    def loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        valid_mask = target != IGNORE_INDEX
        valid = None if bool(valid_mask.all()) else valid_mask.float()
        total = logits.new_zeros(())
        if num_classes == 1:
            t = (target == 1).float()
            x = logits[:, 0]
            if "bce" in parts or "ce" in parts:
                total = total + _valid_mean(
                    F.binary_cross_entropy_with_logits(x, t, reduction="none"), valid)
            if "dice" in parts:
                p = torch.sigmoid(x)
                if valid is not None:
                    p, t = p * valid, t * valid
                total = total + 1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)
            return total
        if "bce" in parts or "ce" in parts:
            total = total + F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX)
        if "dice" in parts:
            p = torch.softmax(logits, 1)
            t = F.one_hot(torch.where(valid_mask, target, 0), num_classes).permute(0, 3, 1, 2).float()
            if valid is not None:
                p, t = p * valid[:, None], t * valid[:, None]
            inter = (p * t).sum((0, 2, 3))
            dice = (2 * inter + 1) / (p.sum((0, 2, 3)) + t.sum((0, 2, 3)) + 1)
            total = total + 1 - dice.mean()
        return total

    return loss


# --- devices, inputs --------------------------------------------------------------------------


def pick_device(device: str | torch.device | None) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CubesearchError(f"device {device} asked for, but CUDA is not available here")
    return dev


class _Inputs:
    """Moves a batch to the device, scales uint8 to [0, 1] and normalises per channel."""

    def __init__(self, channels: int, device: torch.device, channels_last: bool,
                 normalize: bool = True) -> None:
        mean, std = normalization(channels) if normalize else ((0.0,) * channels, (1.0,) * channels)
        self.mean_list, self.std_list = list(mean), list(std)
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1)
        self.device, self.channels_last = device, channels_last

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        non_blocking = self.device.type == "cuda"
        x = image.to(self.device, non_blocking=non_blocking)
        x = x.float().div_(255) if x.dtype == torch.uint8 else x.float()
        x = (x - self.mean) / self.std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = mask.to(self.device, non_blocking=non_blocking).long()
        if y.dim() == 4:
            y = y[:, 0]
        return x, y


def _autocast(device: torch.device, amp: bool):
    if amp and device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast(device.type, enabled=False)


# --- evaluation -------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Any, *, batch_size: int = DEFAULT_BATCH,
             num_classes: int | None = None, loss: str = "bce", device: str | torch.device | None = None,
             amp: bool | None = None, channels_last: bool | None = None, normalize: bool = True,
             workers: int = 0, _inputs: _Inputs | None = None) -> dict[str, Any]:
    """The paper's metrics of `model` on `dataset` (OA, precision, recall, F1, IoU, loss), over
    the whole set. The model is put in eval mode and left on the device used."""
    from torch.utils.data import DataLoader

    dev = pick_device(device) if _inputs is None else _inputs.device
    k = int(num_classes or getattr(dataset, "num_classes", 1))
    use_amp = dev.type == "cuda" if amp is None else bool(amp)
    cl = True if channels_last is None else bool(channels_last)
    inputs = _inputs or _Inputs(getattr(dataset, "in_channels", 3), dev, cl, normalize)
    model.to(dev)
    if cl and _inputs is None:
        model.to(memory_format=torch.channels_last)
    model.eval()
    loss_fn = make_loss(loss, k)
    metrics = SegmentationMetrics(k, device=dev)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        pin_memory=dev.type == "cuda")
    for image, mask in loader:
        x, y = inputs(image, mask)
        with _autocast(dev, use_amp):
            logits = logits_of(model(x), tuple(y.shape[-2:]))
        value = loss_fn(logits, y)
        if not torch.isfinite(value):
            raise TrainingDiverged(f"validation loss is {float(value)}: the model produces "
                                   "non-finite outputs")
        _check_classes(logits, k)
        metrics.update(logits, y, float(value))
    return metrics.compute()


def _check_classes(logits: torch.Tensor, k: int) -> None:
    if logits.shape[1] != k:
        raise CubesearchError(f"the model outputs {logits.shape[1]} channel(s) but the task has "
                              f"{k} class{'es' if k > 1 else ''} (--classes {k}); build the model "
                              f"with num_classes={k}")


# --- warm start -------------------------------------------------------------------------------


def _state_dict_of(source: Any) -> tuple[dict[str, torch.Tensor], str]:
    """A state dict from a checkpoint folder, a .safetensors / .pt file, a dict or a module."""
    if isinstance(source, nn.Module):
        return source.state_dict(), type(source).__name__
    if isinstance(source, dict):
        return source, "state dict"
    path = Path(source)
    if path.is_dir():
        file = path / "model.safetensors"
        if not file.exists():
            raise CubesearchError(f"--init {path}: no model.safetensors in the folder")
        path = file
    if not path.exists():
        raise CubesearchError(f"--init {path}: no such file or folder")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path)), str(path)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any reader error is the user's file
        raise CubesearchError(f"--init {path}: cannot read weights ({one_line(exc)})") from None
    if isinstance(state, dict) and not all(isinstance(v, torch.Tensor) for v in state.values()):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict):
        raise CubesearchError(f"--init {path}: not a state dict")
    return state, str(path)


def load_init(model: nn.Module, source: Any) -> dict[str, Any]:
    """Copy into `model` every tensor of `source` whose name and shape match (strict=False).
    Returns the counts: loaded, total (the model's), missing (no such name: typically the
    replaced convs' new blocks), shape_mismatch, unexpected (in the source only)."""
    state, where = _state_dict_of(source)
    own = model.state_dict()
    if not any(k in own for k in state) and any(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}  # DataParallel copies
    load, mismatch = {}, []
    for key, value in state.items():
        if key in own:
            if tuple(own[key].shape) == tuple(value.shape):
                load[key] = value
            else:
                mismatch.append(key)
    if not load:
        raise CubesearchError(f"--init {where}: none of its {len(state)} tensors matches the "
                              f"model's names and shapes (another architecture?)")
    model.load_state_dict(load, strict=False)
    missing = [k for k in own if k not in load]
    return {"source": where, "loaded": len(load), "total": len(own), "missing": len(missing),
            "loaded_names": sorted(load),
            "shape_mismatch": len(mismatch), "unexpected": len([k for k in state if k not in own]),
            "missing_names": missing[:20], "shape_mismatch_names": mismatch[:20]}


def _teacher(init_from: Any, plan: Any) -> nn.Module:
    """The unconverted, trained model the blocks are distilled from."""
    if isinstance(init_from, nn.Module):
        return init_from
    if init_from is None:
        raise CubesearchError("--distill-steps needs a trained baseline to distil from (--init DIR)")
    path = Path(init_from) if not isinstance(init_from, dict) else None
    if path is not None and path.is_dir() and (path / "plan.json").exists():
        from cubesearch.checkpoint import load

        return load(path)
    if plan is None:
        raise CubesearchError("--distill-steps needs the plan (the model spec) to rebuild the teacher")
    from cubesearch.models import load_model

    teacher = load_model(plan.model, **dict(plan.model_kwargs))
    load_init(teacher, init_from)
    return teacher


def distill(model: nn.Module, teacher: nn.Module, sites: list[str], batches: Callable[[], torch.Tensor],
            steps: int, *, insertions: list[str] = (), lr: float = 1e-3, device: torch.device,
            amp: bool = False, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Local distillation before end-to-end training. Each block replacing a conv at `sites` is
    fitted to reproduce, from the teacher's own input to that conv, the conv's output; each block
    inserted after a module in `insertions` (computing y + block(y)) is fitted to output 0 on
    the teacher's y, so the converted model starts as close to the baseline as the blocks allow.
    The loss is the MSE normalised by the target's variance, averaged over blocks; only the
    blocks' parameters move. Returns the mean loss of the first and last step and per block."""
    from cubesearch.conversion import BLOCK_KEY

    if not sites and not insertions:
        raise CubesearchError("--distill-steps: the plan neither replaces nor inserts anything; "
                              "there is nothing to distil")
    targets = [(n, n, False) for n in sites] + [(n, f"{n}.{BLOCK_KEY}", True) for n in insertions]
    students, teachers = {}, {}
    for name, student_name, _ in targets:
        try:
            students[name] = model.get_submodule(student_name)
            teachers[name] = teacher.get_submodule(name)
        except AttributeError:
            raise CubesearchError(f"--distill-steps: {name!r} is not in both the converted model "
                                  "and the baseline") from None
    teacher.to(device).eval()
    captured: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(name):
        def fn(_module, args, output):
            captured[name] = (args[0].detach(), output.detach())
        return fn

    handles = [teachers[n].register_forward_hook(hook(n)) for n, _, _ in targets]
    params = [p for n, _, _ in targets for p in students[n].parameters()]
    for n, _, _ in targets:
        students[n].train()
    opt = torch.optim.Adam(params, lr=lr)
    first = last = float("nan")
    per_block: dict[str, float] = {}
    try:
        for step in range(steps):
            x = batches()
            captured.clear()
            with torch.no_grad(), _autocast(device, amp):
                teacher(x)
            losses = []
            for n, _, inserted in targets:
                if n not in captured:
                    raise CubesearchError(f"--distill-steps: the baseline's forward never calls {n!r}")
                inp, out_t = captured[n]
                if inserted:  # y + block(y) ≈ y  ⇔  block(y) ≈ 0
                    inp, target = out_t, torch.zeros_like(out_t, dtype=torch.float32)
                    scale = out_t.float().var()
                else:
                    target = out_t.float()
                    scale = target.var()
                with _autocast(device, amp):
                    out = students[n](inp)
                err = F.mse_loss(out.float(), target) / scale.clamp_min(1e-6)
                losses.append(err)
                per_block[n] = float(err.detach())
            total = torch.stack(losses).mean()
            if not torch.isfinite(total):
                raise TrainingDiverged(f"distillation loss is {float(total)} at step {step + 1}; "
                                       "lower --lr")
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            if step == 0:
                first = float(total.detach())
            last = float(total.detach())
        # The blocks' weights moved fast, so their BatchNorm running statistics lag behind them:
        # re-estimate them (cumulative average over a few fresh batches, no gradient) so that
        # the blocks behave in eval mode as they were fitted in train mode.
        norms = [m for n, _, _ in targets for m in students[n].modules()
                 if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
        with torch.no_grad():
            for _ in range(min(steps, BN_RECALIBRATION_BATCHES) if norms else 0):
                captured.clear()
                with _autocast(device, amp):
                    teacher(batches())
                    for n, _, inserted in targets:
                        inp, out_t = captured[n]
                        students[n](out_t if inserted else inp)
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
    finally:
        for h in handles:
            h.remove()
    if log:
        log(f"distillation: {len(targets)} block(s), {steps} steps, normalised MSE "
            f"{first:.4f} → {last:.4f}")
    return {"steps": steps, "blocks": len(targets), "loss_start": first, "loss_end": last,
            "block_loss": per_block}


# --- the model to train -----------------------------------------------------------------------


def _as_plan(plan: Any):
    if plan is None:
        return None
    from cubesearch.plan import Plan

    if isinstance(plan, Plan):
        return plan
    if isinstance(plan, dict):
        return Plan.from_dict(plan)
    return Plan.load(plan)


def resolve_model(model_or_spec: Any, plan: Any, *, num_classes: int | None, input_size: tuple[int, int, int],
                  pretrained: bool, log: Callable[[str], None]) -> tuple[nn.Module, Any, Any, int | None]:
    """(model, plan, default init source, num_classes from the plan/checkpoint)."""
    plan = _as_plan(plan)
    if isinstance(model_or_spec, nn.Module):
        k = int(plan.model_kwargs.get("num_classes")) if plan and "num_classes" in plan.model_kwargs else None
        return model_or_spec, plan, None, k
    spec = str(model_or_spec)
    folder = Path(spec)
    if folder.is_dir():
        if not (folder / "plan.json").exists():
            raise CubesearchError(f"{folder} is a folder without plan.json: not a cubesearch checkpoint")
        from cubesearch.plan import Plan

        saved = Plan.load(folder / "plan.json")
        k = saved.model_kwargs.get("num_classes")
        if plan is None:  # continue training a converted / exported / baseline checkpoint
            from cubesearch.checkpoint import load

            return load(folder), saved, None, int(k) if k is not None else None
        if saved.sites or saved.insertions:
            raise CubesearchError(f"{folder} is already converted; --plan applies to a model spec or "
                                  "an unconverted (baseline) checkpoint")
        from cubesearch.conversion import convert
        from cubesearch.models import load_model

        base = load_model(saved.model, **dict(saved.model_kwargs))
        log(f"converting {saved.model} with the plan; warm start from {folder}")
        return convert(base, plan), plan, folder, int(k) if k is not None else None
    from cubesearch.models import load_model

    if plan is not None:
        k = plan.model_kwargs.get("num_classes", num_classes or 1)
        c = plan.model_kwargs.get("in_channels", input_size[0])
        if plan.model != spec:
            log(f"note: the plan was made for {plan.model!r}; building {spec!r}")
        from cubesearch.conversion import convert

        model = convert(load_model(spec, num_classes=int(k), in_channels=int(c), pretrained=pretrained), plan)
        return model, plan, None, int(k)
    k = num_classes or 1
    model = load_model(spec, num_classes=k, in_channels=input_size[0], pretrained=pretrained)
    try:
        from cubesearch.plan import Plan

        plan = Plan(model=spec, model_kwargs={"num_classes": k, "in_channels": input_size[0]},
                    input_size=tuple(input_size), sites={})
    except ImportError:  # pragma: no cover - before the plan module exists
        plan = None
    return model, plan, None, k


# --- training ---------------------------------------------------------------------------------


def param_groups(model: nn.Module, lr: float, new_lr: float | None,
                 init_report: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The optimiser's groups: with a warm start and `new_lr`, the parameters it did not load
    (the new blocks) peak at `new_lr` and the loaded ones at `lr`; otherwise one group."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if new_lr is None or init_report is None:
        return [{"params": [p for _, p in named], "lr": lr}] if named else []
    loaded = set(init_report["loaded_names"])
    groups = [{"params": [p for n, p in named if n in loaded], "lr": lr},
              {"params": [p for n, p in named if n not in loaded], "lr": new_lr}]
    return [g for g in groups if g["params"]]


def _lr_factor(step: int, total: int, warmup: int, min_ratio: float = 0.01) -> float:
    """Linear warmup over `warmup` steps, then cosine decay to `min_ratio` at `total`."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def _progress_enabled(progress: bool) -> bool:
    return bool(progress) and not os.environ.get("CUBESEARCH_NO_PROGRESS")


def train(model_or_spec: Any, *, plan: Any = None, data: Any = "synthetic", epochs: float | None = None,
          steps: int | None = None, input_size: tuple[int, int, int] = (3, 256, 256),
          out: str | Path | None = None, seed: int = 0, lr: float = DEFAULT_LR,
          batch_size: int = DEFAULT_BATCH, init_from: Any = None, progress: bool = True,
          num_classes: int | None = None, loss: str = "bce", optimizer: str = "adam",
          weight_decay: float = 0.0, warmup: float = 0.05, min_lr_ratio: float = 0.01,
          grad_clip: float | None = None, distill_steps: int = 0, distill_lr: float = 1e-2,
          new_lr: float | None = None,
          train_tiles: int | None = None, val_tiles: int | None = None,
          val_split: float | None = None, crops_per_image: int | None = None,
          eval_every: int | None = None, device: str | torch.device | None = None,
          amp: bool | None = None, channels_last: bool | None = None, deterministic: bool = False,
          workers: int = 0, pretrained: bool = False, normalize: bool = True,
          console: Any = None, log: Callable[[str], None] | None = None) -> TrainResult:
    """Train `model_or_spec` and evaluate it on the validation set; see the module docstring.

    Returns a `TrainResult` whose `metrics` are the last evaluation's (`oa`, `precision`,
    `recall`, `f1`, `iou`, `loss`, …) plus the run's facts (`train_loss`, `steps`, `epochs`,
    `seconds`, `images_per_second`, …). Raises `CubesearchError` for bad inputs and
    `TrainingDiverged` for a NaN/inf loss.
    """
    from rich.console import Console

    t_start = time.perf_counter()
    show = _progress_enabled(progress)
    console = console or Console(stderr=True)
    if log is None:
        log = console.print if show else (lambda _msg: None)
    if epochs is not None and steps is not None:
        raise CubesearchError("give --epochs or --steps, not both")
    if epochs is not None and not epochs > 0:
        raise CubesearchError(f"--epochs must be positive, not {epochs}")
    if steps is not None and int(steps) < 1:
        raise CubesearchError(f"--steps must be at least 1, not {steps}")
    if int(batch_size) < 1:
        raise CubesearchError(f"--batch-size must be at least 1, not {batch_size}")
    if not lr > 0 or not math.isfinite(lr):
        raise CubesearchError(f"--lr must be a positive number, not {lr}")
    if new_lr is not None and not (new_lr > 0 and math.isfinite(new_lr)):
        raise CubesearchError(f"--new-lr must be a positive number, not {new_lr}")
    if optimizer.lower() not in OPTIMIZERS:
        raise CubesearchError(f"unknown optimizer {optimizer!r} (choose from {', '.join(OPTIMIZERS)})")
    input_size = tuple(int(v) for v in input_size)
    if len(input_size) != 3 or min(input_size) < 1:
        raise CubesearchError(f"input size {input_size} is not (C, H, W)")
    if input_size[1] != input_size[2]:
        raise CubesearchError(f"training tiles are square: input size {input_size} has H ≠ W")
    if distill_steps < 0:
        raise CubesearchError(f"--distill-steps must be ≥ 0, not {distill_steps}")
    make_loss(loss, 1)  # validates the name before any expensive work

    dev = pick_device(device)
    use_amp = dev.type == "cuda" if amp is None else bool(amp) and dev.type == "cuda"
    cl = True if channels_last is None else bool(channels_last)
    cuda_devices = [dev.index or 0] if dev.type == "cuda" else []
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    with torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(seed)
        if deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        if dev.type == "cuda":
            torch.backends.cudnn.benchmark = not deterministic
        model, plan, default_init, plan_classes = resolve_model(
            model_or_spec, plan, num_classes=num_classes, input_size=input_size,
            pretrained=pretrained, log=log)
        if num_classes is not None and plan_classes is not None and int(num_classes) != plan_classes:
            raise CubesearchError(f"--classes {num_classes} but the model was built for {plan_classes}")
        k = int(num_classes or plan_classes or getattr(data if not isinstance(data, (tuple, list))
                                                       else data[0], "num_classes", 1) or 1)
        from cubesearch.data import make_datasets

        t_data = time.perf_counter()
        train_ds, val_ds = make_datasets(data, input_size[1], train_tiles=train_tiles, val_tiles=val_tiles,
                                         seed=seed, num_classes=k, in_channels=input_size[0],
                                         val_split=val_split, crops_per_image=crops_per_image)
        data_seconds = time.perf_counter() - t_data
        for ds, role in ((train_ds, "training"), (val_ds, "validation")):
            ds_k = getattr(ds, "num_classes", k)
            if ds_k != k:
                raise CubesearchError(f"the {role} set has {ds_k} classes but the task has {k}")
            if getattr(ds, "in_channels", input_size[0]) != input_size[0]:
                raise CubesearchError(f"the {role} set has {ds.in_channels} channels, the input "
                                      f"size says {input_size[0]}")
            if len(ds) == 0:
                raise CubesearchError(f"the {role} set is empty")
        log(f"data: {_describe(train_ds)}; {_describe(val_ds)}")

        home = _device_of(model)
        init_report = None
        source = init_from if init_from is not None else default_init
        if source is not None:
            init_report = load_init(model, source)
            log(f"warm start from {init_report['source']}: loaded {init_report['loaded']} of "
                f"{init_report['total']} tensors ({init_report['missing']} new or replaced, "
                f"{init_report['shape_mismatch']} with other shapes)")
        model.to(dev)
        if cl:
            model.to(memory_format=torch.channels_last)
        inputs = _Inputs(input_size[0], dev, cl, normalize)

        from torch.utils.data import DataLoader

        bs = min(int(batch_size), len(train_ds))
        steps_per_epoch = max(1, len(train_ds) // bs)
        if steps is not None:
            total_steps = int(steps)
        else:
            total_steps = max(1, math.ceil((DEFAULT_EPOCHS if epochs is None else float(epochs))
                                           * steps_per_epoch))
        eval_steps = _eval_points(total_steps, steps_per_epoch, eval_every, by_epoch=steps is None)
        gen = torch.Generator().manual_seed(seed)

        def batches():
            epoch = 0
            while True:
                if hasattr(train_ds, "set_epoch"):
                    train_ds.set_epoch(epoch)
                loader = DataLoader(train_ds, batch_size=bs, shuffle=True, drop_last=True,
                                    generator=gen, num_workers=workers, pin_memory=dev.type == "cuda")
                yield from loader
                epoch += 1

        stream = batches()

        distill_report = None
        if distill_steps:
            sites = list(getattr(plan, "sites", {}) or {})
            inserted = list(getattr(plan, "insertions", {}) or {})
            teacher = _teacher(source, plan)
            if cl:
                teacher.to(memory_format=torch.channels_last)
            distill_report = distill(model, teacher, sites, lambda: inputs(*next(stream))[0],
                                     int(distill_steps), insertions=inserted, lr=distill_lr,
                                     device=dev, amp=use_amp, log=log)
            del teacher

        groups = param_groups(model, lr, new_lr, init_report)
        params = [p for g in groups for p in g["params"]]
        if not params:
            raise CubesearchError("the model has no trainable parameters")
        opt_name = optimizer.lower()
        if opt_name == "adam":
            opt = torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay)
        elif opt_name == "adamw":
            opt = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay or 1e-2)
        else:
            opt = torch.optim.SGD(groups, lr=lr, momentum=0.9, weight_decay=weight_decay, nesterov=True)
        n_warm = int(warmup) if warmup >= 1 else int(round(warmup * total_steps))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: _lr_factor(s, total_steps, n_warm, min_lr_ratio))
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp and not torch.cuda.is_bf16_supported()) \
            if dev.type == "cuda" else None
        loss_fn = make_loss(loss, k)

        history: list[dict[str, Any]] = []
        running = SegmentationMetrics(k, device=dev)
        val_metrics: dict[str, Any] = {}
        train_seconds = 0.0
        images = 0
        # a live bar on a terminal; in a log file or CI, a line per evaluation instead
        bar = _make_bar(console, show and console.is_terminal)
        task = bar.add_task("train", total=total_steps, info="")
        bar.start()
        try:
            model.train()
            for step in range(1, total_steps + 1):
                image, mask = next(stream)
                t0 = time.perf_counter()
                x, y = inputs(image, mask)
                with _autocast(dev, use_amp):
                    logits = logits_of(model(x), tuple(y.shape[-2:]))
                if step == 1:
                    _check_classes(logits, k)
                value = loss_fn(logits, y)
                loss_value = float(value.detach())
                if not math.isfinite(loss_value):
                    epoch_now = (step - 1) / steps_per_epoch
                    raise TrainingDiverged(
                        f"loss became {loss_value} at step {step} of {total_steps} (epoch "
                        f"{epoch_now:.2f}); lower --lr (now {lr:g}) or check the data")
                opt.zero_grad(set_to_none=True)
                if scaler is not None and scaler.is_enabled():
                    scaler.scale(value).backward()
                    if grad_clip:
                        scaler.unscale_(opt)
                        nn.utils.clip_grad_norm_(params, grad_clip)
                    scaler.step(opt)
                    scaler.update()
                else:
                    value.backward()
                    if grad_clip:
                        nn.utils.clip_grad_norm_(params, grad_clip)
                    opt.step()
                sched.step()
                running.update(logits.detach(), y, loss_value)
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                train_seconds += time.perf_counter() - t0
                images += x.shape[0]
                live = running.compute()
                info = f"loss {live['loss']:.4f} · IoU {live['iou']:.3f}"
                if val_metrics:
                    info += f" · val IoU {val_metrics['iou']:.3f}"
                speed = images / max(train_seconds, 1e-9)
                bar.update(task, completed=step, info=f"{info} · {speed:.1f} img/s")
                if step in eval_steps:
                    bar.update(task, info=info + " · evaluating…")
                    val_metrics = evaluate(model, val_ds, batch_size=bs, num_classes=k, loss=loss,
                                           amp=use_amp, _inputs=inputs, workers=workers)
                    train_part = running.compute()
                    row = {"step": step, "epoch": round(step / steps_per_epoch, 4),
                           "lr": opt.param_groups[0]["lr"], "train_loss": train_part["loss"],
                           "train_iou": train_part["iou"],
                           **{f"val_{key}": v for key, v in val_metrics.items()
                              if key in ("loss", "oa", "precision", "recall", "f1", "iou", "miou")},
                           "seconds": round(time.perf_counter() - t_start, 3)}
                    history.append(row)
                    running.reset()
                    model.train()
                    info = (f"loss {row['train_loss']:.4f} · val loss {val_metrics['loss']:.4f} · "
                            f"val IoU {val_metrics['iou']:.3f}")
                    bar.update(task, info=info)
                    if show and not console.is_terminal:
                        log(f"train: step {step}/{total_steps} (epoch {row['epoch']:g}): {info}")
        finally:
            bar.stop()
            if deterministic and not was_deterministic:
                torch.use_deterministic_algorithms(False)

    model.eval()
    final = {key: v for key, v in val_metrics.items()}
    last = history[-1] if history else {}
    final.update({
        "train_loss": last.get("train_loss"), "train_iou": last.get("train_iou"),
        "steps": total_steps, "epochs": round(total_steps / steps_per_epoch, 4),
        "batch_size": bs, "lr": lr, "new_lr": new_lr if len(groups) > 1 else None,
        "optimizer": opt_name, "loss_fn": loss, "seed": seed,
        "num_classes": k, "input_size": list(input_size), "device": str(dev), "amp": use_amp,
        "channels_last": cl, "train_tiles": len(train_ds), "val_tiles": len(val_ds),
        "data": _data_name(data), "seconds": round(time.perf_counter() - t_start, 3),
        "data_seconds": round(data_seconds, 3), "train_seconds": round(train_seconds, 3),
        "images_per_second": round(images / train_seconds, 3) if train_seconds else None,
        "input_mean": inputs.mean_list, "input_std": inputs.std_list,
    })
    if init_report:
        final.update(init_loaded=init_report["loaded"], init_total=init_report["total"],
                     init_source=init_report["source"])
    if distill_report:
        final.update(distill_steps=distill_report["steps"], distill_loss_start=distill_report["loss_start"],
                     distill_loss_end=distill_report["loss_end"])
    if dev.type == "cuda":
        final["peak_memory_mb"] = round(torch.cuda.max_memory_allocated(dev) / 2**20, 1)
    model.to(home).to(memory_format=torch.contiguous_format)
    out_dir = None
    if out is not None:
        out_dir = Path(out)
        _save(out_dir, model, plan, final, log)
    return TrainResult(model=model, metrics=final, history=history, out_dir=out_dir, plan=plan,
                       init=init_report, distill=distill_report)


def _eval_points(total: int, per_epoch: int, every: int | None, by_epoch: bool) -> set[int]:
    points = {total}
    if every:
        points |= set(range(int(every), total + 1, int(every)))
    elif by_epoch:
        points |= set(range(per_epoch, total + 1, per_epoch))
    return points


def _describe(ds: Any) -> str:
    return ds.describe() if hasattr(ds, "describe") else f"{type(ds).__name__} ({len(ds)} samples)"


def _data_name(data: Any) -> str:
    if isinstance(data, (tuple, list)):
        return getattr(data[0], "name", "datasets")
    return str(data)


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _make_bar(console: Any, show: bool):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                    console=console, disable=not show, transient=False)


def _save(folder: Path, model: nn.Module, plan: Any, metrics: dict, log: Callable[[str], None]) -> None:
    if plan is None:
        raise CubesearchError("saving a checkpoint needs the model's plan (pass plan=, or train from a "
                              "model spec so cubesearch can rebuild it)")
    from cubesearch.checkpoint import save

    save(folder, model, plan, metrics)
    log(f"checkpoint: {folder}")

"""Training a supernet from the trained baseline, in two stages, checkpointed and resumable.

1. **Local distillation** (`training.distill`'s loss, over sampled configs): the baseline runs
   frozen; at every searchable site, `distill_configs` configurations sampled from the space are fitted to
   reproduce the conv's output from the conv's own input (MSE normalised by the target's
   variance). Only block weights move.
2. **End to end, sandwich rule** (BigNAS): every step runs the unconverted path on the labels,
   then the cheapest feasible plan and `random_paths` random feasible plans on the labels plus
   in-place distillation toward the unconverted path's (detached) logits (`kd_weight`);
   gradients accumulate over the paths, then one optimiser step. The baseline's weights move at
   `base_lr` (default lr / 4, as a trial fine-tunes them), the blocks at `lr`, both on
   `training`'s cosine schedule.

A checkpoint (`SupernetTrainer.out`) is written after the distillation and after every epoch:
`ckpt-TAG.safetensors` (supernet), `ckpt-TAG.optim.safetensors` (Adam's moments) and
`state.json` (last, atomically: it names the pair, so a kill -9 at any moment leaves the previous
consistent checkpoint). Rerunning with the same folder resumes at the last checkpoint. Every
epoch draws its data order and plans from (seed, epoch), so a resumed run repeats the
uninterrupted one's epochs. Finally the model's BatchNorms get the unconverted path's statistics
(`reference_statistics`), the reference that scoring re-estimates from.

**Shards** (data-parallel training, `cubesearch.supernet.distributed`): with `shards=N` a step's
global batch is N × `batch_size` tiles, cut into N shards of `batch_size`; every shard runs the
same sampled plans. `rank=r` makes this process run shard r only, its gradients averaged with
the other ranks' by `wrap` (DistributedDataParallel); `rank=None` runs every shard here, each
loss scaled 1/N, its gradients accumulated: the single-process equivalent of N workers, BatchNorm
batch statistics per shard included. One step's code serves all three (`train_epoch`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.utils.data import DataLoader

from cubesearch.errors import CubesearchError
from cubesearch.helpers import atomic_write, file_sha256, model_device
from cubesearch.supernet.score import fixed_batches, reference_statistics
from cubesearch.training import logits_of, make_loss
from cubesearch.training.distillation import normalised_mse
from cubesearch.training.inputs import normalised
from cubesearch.training.losses import distillation_loss
from cubesearch.training.optim import cosine, warmup_steps

STATE = "state.json"
DISTILL_EPOCH = 10_000  # the data epoch (augmentations, order) of the distillation batches


@dataclass
class SupernetTrainConfig:
    """How a supernet trains (see the module docstring)."""

    epochs: float = 4.0  # end-to-end epochs over the training set
    distill_steps: int = 200  # local distillation batches (0: skip)
    distill_configs: int = 2  # configurations per site per distillation batch
    distill_lr: float = 1e-2
    lr: float = 2e-3  # the blocks' peak learning rate
    base_lr: float | None = None  # the baseline's weights (None: lr / 4)
    batch_size: int = 8
    random_paths: int = 2  # random feasible plans per step, besides the cheapest and the unconverted
    kd_weight: float = 1.0  # in-place distillation toward the unconverted logits (0: labels only)
    loss: str = "bce"
    warmup: float = 0.05
    min_lr_ratio: float = 0.01
    budget_flops: float | None = None  # plans sampled within it (None: any plan)
    calib_batches: int = 8  # batches for the final reference BatchNorm statistics
    seed: int = 0
    channels_last: bool = True

    def __post_init__(self) -> None:
        if not self.epochs >= 0 or self.distill_steps < 0 or self.random_paths < 0:
            raise CubesearchError("epochs, distill_steps and random_paths must be ≥ 0")
        if self.batch_size < 1 or not self.lr > 0 or self.kd_weight < 0:
            raise CubesearchError("batch_size ≥ 1, lr > 0 and kd_weight ≥ 0 are required")

    # settings that make two runs the same run (a resume must not change them)
    def identity(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("calib_batches")
        return d


@dataclass
class SupernetTrainResult:
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0  # wall time of the training, summed over resumed runs
    passes: float = 0.0  # full-model forward+backward passes (a distillation batch counts 1/3)
    steps_per_epoch: int = 0
    baseline_epochs: float = 0.0  # passes / steps_per_epoch: the cost in baseline epochs
    resumed_from: str | None = None
    done: bool = False


class SupernetTrainer:
    """Trains `supernet` on `train_ds`; `out` (optional) holds the resumable checkpoints."""

    def __init__(self, supernet: Any, train_ds: Any, config: SupernetTrainConfig | None = None, *,
                 out: str | os.PathLike | None = None,
                 log: Callable[[str], None] | None = None, shards: int = 1,
                 rank: int | None = None,
                 wrap: Callable[[nn.Module], nn.Module] | None = None,
                 on_step: Callable[[int, int], None] | None = None) -> None:
        """`shards`, `rank`, `wrap`: data-parallel training (module docstring). `wrap(net)` is
        called once, after the distillation, and the step runs what it returns (DDP); with a
        `rank`, only rank 0 (or None) distills, logs and writes checkpoints. `on_step(done,
        total)`: after each end-to-end step (a progress bar)."""
        self.sn, self.train_ds = supernet, train_ds
        self.cfg = config or SupernetTrainConfig()
        self.out = Path(out) if out is not None else None
        self.shards, self.rank, self.wrap = int(shards), rank, wrap
        if self.shards < 1 or (rank is not None and not 0 <= rank < self.shards):
            raise CubesearchError(f"rank {rank} of {shards} shards is not a valid data-parallel rank")
        if len(train_ds) < self.shards:
            raise CubesearchError(f"{len(train_ds)} training tiles cannot be cut into "
                                  f"{self.shards} shards")
        self.rank0 = rank in (None, 0)
        self.log = (log if self.rank0 else None) or (lambda _m: None)
        self.on_step = on_step if self.rank0 else None
        self.model: nn.Module = supernet.net  # what a step calls (wrap's result once wrapped)
        self.device = model_device(supernet)
        self.bs = min(self.cfg.batch_size, len(train_ds) // self.shards)  # per shard
        self.steps_per_epoch = max(1, len(train_ds) // (self.bs * self.shards))
        self.total_steps = max(0, math.ceil(self.cfg.epochs * self.steps_per_epoch))
        self.n_epochs = math.ceil(self.total_steps / self.steps_per_epoch) if self.total_steps else 0
        self.k = int(getattr(train_ds, "num_classes", 1) or 1)
        self.loss_fn = make_loss(self.cfg.loss, self.k)
        base_lr = self.cfg.base_lr if self.cfg.base_lr is not None else self.cfg.lr / 4
        self.opt = torch.optim.Adam([
            {"params": supernet.base_parameters(), "lr": base_lr, "peak": base_lr},
            {"params": supernet.block_parameters(), "lr": self.cfg.lr, "peak": self.cfg.lr}])
        self.result = SupernetTrainResult(steps_per_epoch=self.steps_per_epoch)
        self._cheapest: dict | None = None
        self.stage = "start"  # start → distilled → epoch-N … → done
        self.epoch = 0

    # --- data -----------------------------------------------------------------------------------

    def _batches(self, epoch: int, ranks: range | None = None):
        """This process's batches: the whole batch, or with shards the global batch (rank None)
        or its shard (rank r), from the same permutation of the training set; `ranks` picks
        other shards."""
        if hasattr(self.train_ds, "set_epoch"):
            self.train_ds.set_epoch(epoch)
        gen = torch.Generator().manual_seed(self.cfg.seed * 100_003 + epoch)
        if self.shards == 1:
            loader = DataLoader(self.train_ds, batch_size=self.bs, shuffle=True, drop_last=True,
                                generator=gen)
        else:
            if ranks is None:
                ranks = range(self.shards) if self.rank is None else range(self.rank, self.rank + 1)
            loader = DataLoader(self.train_ds, generator=gen, batch_sampler=ShardSampler(
                len(self.train_ds), self.bs, self.shards, ranks, gen))
        channels = getattr(self.train_ds, "in_channels", None)
        while True:
            for image, mask in loader:
                x = normalised(image, channels).to(self.device)
                if self.cfg.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                y = mask.to(self.device).long()
                yield x, (y[:, 0] if y.dim() == 4 else y)

    # --- stage 1 ----------------------------------------------------------------------------------

    def distill(self) -> dict[str, float]:
        cfg, sn = self.cfg, self.sn
        teacher = sn.plain().eval()
        sites = sn.sites
        teacher_modules = dict(teacher.named_modules())
        captured: dict[str, tuple[Tensor, Tensor]] = {}

        def hook(name: str):
            def fn(_m: nn.Module, args: Any, output: Tensor) -> None:
                captured.setdefault(name, (args[0].detach(), output.detach()))
            return fn

        handles = [teacher_modules[n].register_forward_hook(hook(n)) for n in sites]
        params = sn.block_parameters()
        opt = torch.optim.Adam(params, lr=cfg.distill_lr)
        rng = random.Random(cfg.seed * 7919 + 1)
        torch.manual_seed(cfg.seed)
        stream = self._batches(DISTILL_EPOCH, range(1))  # with shards: shard 0's, as on rank 0
        for site in sites.values():
            site.units.train()
        first = last = float("nan")
        try:
            for step in range(cfg.distill_steps):
                x, _ = next(stream)
                captured.clear()
                with torch.no_grad():
                    teacher(x)
                losses = []
                for name, site in sites.items():
                    inp, target = captured[name]
                    for _ in range(cfg.distill_configs):
                        c = rng.choice(site.config_list)
                        losses.append(normalised_mse(site.run(inp, c), target))
                total = torch.stack(losses).mean()
                if not torch.isfinite(total):
                    raise CubesearchError(f"supernet distillation loss is {float(total)} at step "
                                          f"{step + 1}; lower distill_lr")
                opt.zero_grad(set_to_none=True)
                total.backward()
                opt.step()
                last = float(total.detach())
                first = last if step == 0 else first
                if (step + 1) % 25 == 0:
                    self.log(f"supernet distillation: step {step + 1}/{cfg.distill_steps}, "
                             f"normalised MSE {last:.4f}")
                self.result.passes += 1 / 3  # the teacher's forward; the blocks are local
        finally:
            for h in handles:
                h.remove()
        self.log(f"supernet distillation: {len(sites)} sites × {cfg.distill_configs} configs, "
                 f"{cfg.distill_steps} steps, normalised MSE {first:.4f} → {last:.4f}")
        return {"distill_loss_start": first, "distill_loss_end": last}

    # --- stage 2 ----------------------------------------------------------------------------------

    def _paths(self, rng: random.Random) -> list[dict]:
        sn, budget = self.sn, self.cfg.budget_flops
        paths: list[dict] = []
        if sn.cost is not None:
            if self._cheapest is None:
                self._cheapest = sn.cheapest_plan()
            paths.append(self._cheapest)
        paths += [sn.sample_plan(rng, budget) for _ in range(self.cfg.random_paths)]
        return paths

    def train_epoch(self, epoch: int) -> dict[str, float]:
        cfg, sn = self.cfg, self.sn
        torch.manual_seed(cfg.seed * 100_003 + epoch)
        rng = random.Random(cfg.seed * 100_003 + epoch)  # the same plans on every rank
        stream = self._batches(epoch)
        warm = warmup_steps(cfg.warmup, self.total_steps)
        first = epoch * self.steps_per_epoch
        last = min(self.total_steps, first + self.steps_per_epoch)
        sums = {"loss_unconverted": 0.0, "loss_paths": 0.0}
        sn.net.train()
        for step in range(first, last):
            factor = cosine(step, self.total_steps, warm, cfg.min_lr_ratio)
            for g in self.opt.param_groups:
                g["lr"] = g["peak"] * factor
            x, y = next(stream)
            self.opt.zero_grad(set_to_none=True)
            paths = self._paths(rng)
            if self.shards == 1:
                parts = [(0, x, y)]
            elif self.rank is None:  # every shard here, as the ranks would run them
                parts = list(zip(range(self.shards), x.chunk(self.shards), y.chunk(self.shards),
                                 strict=True))
            else:
                parts = [(self.rank, x, y)]
            for shard, xs, ys in parts:
                if self.shards > 1:  # each shard's own random stream (dropout …), as on its rank
                    torch.manual_seed(((cfg.seed * 100_003 + step) * 1_009 + shard) % 2**62)
                for key, value in self._step(step, xs, ys, paths, 1 / len(parts)).items():
                    sums[key] += value / len(parts)
            self.opt.step()
            self.result.passes += 1 + len(paths)  # of the (global) batch
            if self.on_step is not None:
                self.on_step(step + 1, self.total_steps)
        sn.set_plan({})
        n = max(1, last - first)
        return {k: v / n for k, v in sums.items()}

    def _step(self, step: int, x: Tensor, y: Tensor, paths: list[dict],
              scale: float) -> dict[str, float]:
        """One batch (or shard) of a sandwich step: the unconverted path on the labels, then
        each of `paths` on the labels and the unconverted logits; gradients accumulate (losses
        × `scale`). Under DDP only the last backward pass synchronises (`no_sync` before it: one
        all-reduce of the accumulated gradients per step). Returns the losses."""
        cfg, sn = self.cfg, self.sn
        size = tuple(y.shape[-2:])
        no_sync = getattr(self.model, "no_sync", None)
        losses = {"loss_unconverted": 0.0, "loss_paths": 0.0}
        target = None
        runs: list[dict | None] = [None, *paths]  # None: the unconverted path, first
        for i, plan in enumerate(runs):
            local = no_sync is not None and i < len(runs) - 1
            with no_sync() if local else contextlib.nullcontext():
                sn.set_plan(plan or {})
                out = logits_of(self.model(x), size)
                loss = self.loss_fn(out, y)
                if target is not None and cfg.kd_weight:
                    loss = loss + cfg.kd_weight * distillation_loss(out, target)
                if not torch.isfinite(loss):
                    where = "" if plan is None else " (a sampled path)"
                    raise CubesearchError(f"supernet loss is {float(loss)} at step {step + 1}"
                                          f"{where}; lower lr")
                (loss * scale if scale != 1 else loss).backward()
            if plan is None:
                target = out.detach()
                losses["loss_unconverted"] = float(loss.detach())
            else:
                losses["loss_paths"] += float(loss.detach()) / len(paths)
        return losses

    # --- checkpoints --------------------------------------------------------------------------

    def _optim_tensors(self) -> tuple[dict[str, Tensor], list[dict[str, Any]]]:
        state = self.opt.state_dict()
        tensors = {}
        for idx, st in state["state"].items():
            for k, v in st.items():
                tensors[f"{idx}/{k}"] = (v if isinstance(v, Tensor) else torch.tensor(v)
                                         ).detach().cpu().contiguous().clone()
        return tensors, state["param_groups"]

    def save(self, tag: str) -> None:
        if self.out is None or not self.rank0:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        weights, optim = self.out / f"ckpt-{tag}.safetensors", self.out / f"ckpt-{tag}.optim.safetensors"
        save_file(self.sn.state_tensors(), str(weights))
        tensors, groups = self._optim_tensors()
        save_file(tensors, str(optim))
        state = {"stage": self.stage, "epoch": self.epoch, "tag": tag,
                 "weights": weights.name, "weights_sha256": file_sha256(weights),
                 "optim": optim.name, "optim_sha256": file_sha256(optim), "param_groups": groups,
                 "config": self.cfg.identity(), "shards": self.shards,
                 "supernet": self.sn.manifest(), "result": asdict(self.result)}
        atomic_write(self.out / STATE, json.dumps(state, indent=1, default=str) + "\n")
        for old in self.out.glob("ckpt-*.safetensors"):  # only now is the previous pair unneeded
            if old.name not in (weights.name, optim.name):
                old.unlink(missing_ok=True)

    def resume(self) -> bool:
        """Load the last checkpoint in `out`, if any. True when one was loaded."""
        if self.out is None or not (self.out / STATE).is_file():
            return False
        state = json.loads((self.out / STATE).read_text())
        if state.get("config") != self.cfg.identity():
            changed = sorted(k for k in self.cfg.identity()
                             if state.get("config", {}).get(k) != self.cfg.identity()[k])
            raise CubesearchError(f"{self.out} holds a supernet trained with other settings "
                                  f"({', '.join(changed)}); resume with the same ones or use a "
                                  "new folder")
        if int(state.get("shards", 1)) != self.shards:
            raise CubesearchError(f"{self.out} holds a supernet trained with a global batch of "
                                  f"{state.get('shards', 1)} shard(s) (data-parallel workers), not "
                                  f"{self.shards}; resume with as many or use a new folder")
        if state["supernet"].get("sites") != self.sn.site_names:
            raise CubesearchError(f"{self.out} holds a supernet of other sites (another model?)")
        weights, optim = self.out / state["weights"], self.out / state["optim"]
        for path, key in ((weights, "weights_sha256"), (optim, "optim_sha256")):
            if not path.is_file() or file_sha256(path) != state[key]:
                raise CubesearchError(f"{path} is missing or does not match {STATE} (altered)")
        self.sn.net.load_state_dict(load_file(str(weights)))
        tensors = load_file(str(optim))
        opt_state: dict[int, dict[str, Tensor]] = {}
        for key, value in tensors.items():
            idx, name = key.split("/", 1)
            opt_state.setdefault(int(idx), {})[name] = value
        self.opt.load_state_dict({"state": opt_state, "param_groups": state["param_groups"]})
        self.stage, self.epoch = state["stage"], int(state["epoch"])
        self.result = SupernetTrainResult(**state["result"])
        self.result.resumed_from = state["tag"]
        self.log(f"supernet: resuming from {self.out} ({state['tag']})")
        return True

    # --- the whole run ----------------------------------------------------------------------

    def run(self, *, stop_after_epochs: int | None = None) -> SupernetTrainResult:
        """Train (or resume) to the end; `stop_after_epochs` returns early after that many
        end-to-end epochs in this call (tests use it to stand for an interruption)."""
        self.resume()
        done_here = 0
        t0 = time.perf_counter()
        base = self.result.seconds
        if self.stage == "start":  # data-parallel: rank 0 distils, `wrap` hands its weights on
            info = self.distill() if self.cfg.distill_steps and self.rank0 else {}
            self.result.history.append({"stage": "distill", **info})
            self.stage = "distilled"
            self.result.seconds = base + time.perf_counter() - t0
            self.save("distill")
        if self.wrap is not None and self.model is self.sn.net:
            self.model = self.wrap(self.sn.net)
        while self.stage != "done" and self.epoch < self.n_epochs:
            if stop_after_epochs is not None and done_here >= stop_after_epochs:
                return self.result
            row = self.train_epoch(self.epoch)
            self.epoch += 1
            done_here += 1
            self.stage = f"epoch-{self.epoch}"
            self.result.history.append({"stage": self.stage, **row})
            self.result.seconds = base + time.perf_counter() - t0
            self.log(f"supernet epoch {self.epoch}/{self.n_epochs}: loss (unconverted) "
                     f"{row['loss_unconverted']:.4f}, sampled paths {row['loss_paths']:.4f}")
            self.save(f"epoch-{self.epoch:03d}")
        if self.stage != "done":
            batches = fixed_batches(self.train_ds, self.cfg.calib_batches, self.bs,
                                    self.cfg.seed + 17)
            reference_statistics(self.sn, [b.to(self.device) for b in batches])
            self.stage = "done"
            self.result.done = True
            self.result.seconds = base + time.perf_counter() - t0
            self.result.baseline_epochs = self.result.passes / self.steps_per_epoch
            self.save("final")
        return self.result


class ShardSampler:
    """Batches of indices for data-parallel shards: one permutation of `n` (drawn from `gen`
    when iterated) cut into global batches of `shards` × `batch_size`; yields, per step, the
    concatenated shards of `ranks` (one rank's, or all of them for the single-process run)."""

    def __init__(self, n: int, batch_size: int, shards: int, ranks: range,
                 gen: torch.Generator) -> None:
        self.n, self.bs, self.shards, self.ranks, self.gen = n, batch_size, shards, ranks, gen

    def __len__(self) -> int:
        return self.n // (self.bs * self.shards)

    def __iter__(self):
        perm = torch.randperm(self.n, generator=self.gen).tolist()
        glob = self.bs * self.shards
        for step in range(len(self)):
            base = step * glob
            yield perm[base + self.ranks.start * self.bs:base + self.ranks.stop * self.bs]


def train_supernet(supernet: Any, train_ds: Any, config: SupernetTrainConfig | None = None, *,
                   out: str | os.PathLike | None = None, log: Callable[[str], None] | None = None,
                   **overrides: Any) -> SupernetTrainResult:
    """Train `supernet` (its conv paths holding the trained baseline) on `train_ds`; resumes from
    `out` when it holds a checkpoint. `overrides` are `SupernetTrainConfig` fields."""
    cfg = config or SupernetTrainConfig(**overrides)
    if config is not None and overrides:
        cfg = SupernetTrainConfig(**{**asdict(config), **overrides})
    return SupernetTrainer(supernet, train_ds, cfg, out=out, log=log).run()

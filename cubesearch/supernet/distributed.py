"""Data-parallel supernet training on Ray Train (`--backend ray --supernet-workers N`).

`train_supernet_distributed(supernet, train_ds, config, workers=N, out=FOLDER)` runs the
end-to-end stage of `SupernetTrainer` on N Ray Train workers (`ray.train.torch.TorchTrainer`):
DistributedDataParallel over NCCL when the cluster has a GPU per worker, gloo on CPUs. It is the
same trainer with `shards=N, rank=r` and DDP as its `wrap` (`cubesearch.supernet.train`), so one
step's code serves both:

- the supernet (weights, space, cost model) goes to the workers once through Ray's object store,
  the training set too; nothing large rides in the trainer's closure;
- every rank seeds its plan sampler and random streams identically, so all ranks run the same
  paths each step; DDP finds the parameters a path leaves unused (`find_unused_parameters`);
- a step's global batch is N × `batch_size` tiles: one permutation of the training set per epoch,
  each global batch cut into N shards, rank r taking shard r; DDP averages the gradients;
- rank 0 distils (the other ranks receive its weights when DDP wraps the model), logs, and writes
  the per-epoch checkpoints into `out` exactly as the single-process trainer does, so a killed
  run resumes from its last epoch (with the same N: the global batch is part of the run) and a
  finished folder reads the same. Every worker resumes from `out` itself, so `out` must be a
  folder every worker and this process see (one machine, or a shared file system, as Ray Train's
  own storage needs on several machines); workers that see different checkpoints stop with an
  error rather than train out of step.

**What "the same as one process" means.** BatchNorm in training mode normalises each worker's
shard by the shard's own statistics (SyncBatchNorm does not run on CPUs / gloo, and is not used
on GPUs either, so both behave alike). The single-process equivalent is therefore the trainer
with `shards=N, rank=None`: it runs the same global batch as the same N shards, each loss scaled
1/N, gradients accumulated, and after each optimiser step its parameters equal the workers' to
float rounding (the test checks one step at 1e-5). BatchNorm running statistics differ: each
worker keeps its own (rank 0's are saved), the single process accumulates every shard's; at
the end the model's BatchNorms get the same reference statistics (recomputed on fixed batches),
and scoring re-estimates the blocks' per plan.
The learning rates are not rescaled for the N-fold larger global batch.
"""

from __future__ import annotations

import copy
import os
import queue as _queue
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from cubesearch.errors import CubesearchError, one_line
from cubesearch.supernet.train import STATE, SupernetTrainConfig, SupernetTrainer, SupernetTrainResult


def _portable(supernet: Any) -> Any:
    """A shallow copy of the supernet without what `fit` attached (datasets, scorer)."""
    clone = copy.copy(supernet)
    for key in ("_data", "_scorer"):
        clone.__dict__.pop(key, None)
    return clone


def _train_loop(config: dict[str, Any]) -> None:
    """One Ray Train worker: the supernet from the object store, DDP, its shard of each batch."""
    import ray
    import ray.train
    import ray.train.torch
    from torch.nn.parallel import DistributedDataParallel

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(max(1, int(config["threads"])))
    device = ray.train.torch.get_device()
    # copies: what the object store hands out is read-only memory, aligned otherwise than
    # torch's own (kernels then round differently from the single-process run)
    supernet = copy.deepcopy(ray.get(config["supernet"])).to(device)
    train_ds = copy.deepcopy(ray.get(config["data"]))
    lines = config["lines"]

    def log(line: str) -> None:
        lines.put(line)

    def wrap(net: torch.nn.Module) -> torch.nn.Module:
        ids = [device.index] if device.type == "cuda" else None
        # buffers stay per rank: training-mode BatchNorm normalises by the batch, and the
        # running statistics are re-estimated at the end (and per plan when scoring)
        return DistributedDataParallel(net, device_ids=ids, find_unused_parameters=True,
                                       broadcast_buffers=False)

    _check_same_checkpoint(Path(config["out"]))
    trainer = SupernetTrainer(supernet, train_ds, config["config"], out=config["out"], log=log,
                              shards=world, rank=rank, wrap=wrap)
    result = trainer.run(stop_after_epochs=config["stop_after_epochs"])
    ray.train.report({"done": result.done, "epoch": trainer.epoch, "rank": rank})


def _check_same_checkpoint(out: Path) -> None:
    """Every rank must resume from the same checkpoint (a folder not shared would let rank 0
    resume at epoch k while another starts afresh: steps out of step)."""
    import json

    import torch.distributed as dist

    try:
        tag = json.loads((out / STATE).read_text()).get("tag")
    except (OSError, ValueError):
        tag = None
    tags: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(tags, tag)
    if len(set(tags)) > 1:
        raise CubesearchError(f"the workers see different supernet checkpoints in {out} "
                              f"({', '.join(str(t) for t in tags)} by rank): the folder must be "
                              "on a file system every worker shares")


def train_supernet_distributed(supernet: Any, train_ds: Any,
                               config: SupernetTrainConfig | None = None, *, workers: int,
                               out: str | os.PathLike | None = None,
                               log: Callable[[str], None] | None = None,
                               use_gpu: bool | None = None, cpus_per_worker: float = 1.0,
                               stop_after_epochs: int | None = None) -> SupernetTrainResult:
    """Train `supernet` on `train_ds` with `workers` data-parallel Ray Train workers (see the
    module docstring); resumes from `out` when it holds a checkpoint of the same run. On return
    `supernet` holds the trained weights (read back from rank 0's last checkpoint). Uses the
    running Ray instance, or starts a local one. `use_gpu`: None = when the cluster has a GPU per
    worker. `stop_after_epochs` stops the workers early (tests: an interruption)."""
    ray = _require_ray()
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.util.queue import Queue

    workers = int(workers)
    if workers < 1:
        raise CubesearchError(f"supernet workers must be at least 1, not {workers}")
    cfg = config or SupernetTrainConfig()
    temp = None if out is not None else tempfile.mkdtemp(prefix="cubesearch-supernet-")
    folder = Path(out) if out is not None else Path(temp)
    say = log or (lambda _m: None)
    try:
        driver = SupernetTrainer(supernet, train_ds, cfg, out=folder, log=log, shards=workers)
        if driver.resume() and driver.stage == "done":
            return driver.result
        if not ray.is_initialized():
            ray.init(address="local", include_dashboard=False, log_to_driver=False)
        if use_gpu is None:
            use_gpu = ray.cluster_resources().get("GPU", 0) >= workers
        say(f"supernet: data-parallel training on {workers} Ray Train workers "
            f"({'NCCL, GPU' if use_gpu else 'gloo, CPU'}), global batch {workers} × "
            f"{driver.bs}")
        lines = Queue(actor_options={"num_cpus": 0})
        loop_config = {"supernet": ray.put(_portable(supernet)), "data": ray.put(train_ds),
                       "config": cfg, "out": str(folder), "lines": lines,
                       "threads": cpus_per_worker, "stop_after_epochs": stop_after_epochs}
        resources = {"CPU": cpus_per_worker, **({"GPU": 1} if use_gpu else {})}
        trainer = TorchTrainer(
            _train_loop, train_loop_config=loop_config,
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=bool(use_gpu),
                                         resources_per_worker=resources),
            torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
            run_config=RunConfig(name="supernet", storage_path=str(folder / "ray-train")))
        _fit(trainer, lines, say)
        done = SupernetTrainer(supernet, train_ds, cfg, out=folder, shards=workers)
        if not done.resume():
            raise CubesearchError(f"the supernet's workers left no checkpoint in {folder}: is it "
                                  "on a file system rank 0 shares with this process?")
        done.result.resumed_from = driver.result.resumed_from  # where the workers started
        return done.result
    finally:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)


def _fit(trainer: Any, lines: Any, say: Callable[[str], None]) -> None:
    """`trainer.fit()` in a thread; rank 0's log lines are passed to `say` here as they come."""
    failure: list[BaseException] = []

    def target() -> None:
        try:
            trainer.fit()
        except BaseException as exc:  # handed to the caller's thread below
            failure.append(exc)

    thread = threading.Thread(target=target, name="supernet-ray-train", daemon=True)
    thread.start()
    while thread.is_alive() or not lines.empty():
        try:
            say(lines.get(timeout=0.5))
        except _queue.Empty:
            continue
        except Exception:  # the queue's actor is gone: nothing more to relay
            if not thread.is_alive():
                break
    thread.join()
    if failure:
        exc = failure[0]
        cause = _root(exc)
        if isinstance(cause, CubesearchError):
            raise CubesearchError(str(cause)) from None
        raise CubesearchError(f"supernet training on Ray workers failed: "
                              f"{one_line(cause, with_type=True)}") from exc


def _root(exc: BaseException) -> BaseException:
    """The worker's own exception inside Ray Train's wrappers, when it is reachable."""
    seen = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        inner = (getattr(exc, "cause", None) or getattr(exc, "worker_failures", None)
                 or exc.__cause__)
        if isinstance(inner, dict) and inner:
            inner = next(iter(inner.values()))
        if not isinstance(inner, BaseException):
            return exc
        exc = inner
    return exc


def _require_ray() -> Any:
    try:
        import ray
        import ray.train.torch  # noqa: F401
    except ImportError:
        raise CubesearchError("data-parallel supernet training needs Ray Train: "
                              "pip install 'cubesearch[ray]'") from None
    return ray

"""Who measures the cells: this process one after another (`local`), or Ray tasks (`ray`).

Either way the driver alone writes the map (`MapStore.add`, one atomic write per finished cell)
and draws the progress bar. The Ray path reuses the search's connection (`search.cluster.connect`:
a local instance, or `--address`), its resource check and its default concurrency; the context,
with its datasets and the baseline's folder, reaches workers once through the object store.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from cubesearch.core.errors import CubesearchError
from cubesearch.core.helpers import import_named
from cubesearch.core.progressbar import eta_bar
from cubesearch.search.cluster import connect, require_ray
from cubesearch.search.context import SearchContext
from cubesearch.search.sitemap.cells import CellJob, measure_cell
from cubesearch.search.sitemap.store import MapStore

RUNNERS = ("local", "ray")
RAY_BACKEND = "cubesearch.search.ray"

Done = Callable[[dict[str, Any]], None]


def run_cells(ctx: SearchContext, jobs: Sequence[CellJob], store: MapStore, base_iou: float, *,
              seed: int, backend: str, console: Console, progress: bool) -> None:
    """Measure `jobs` (the cells the store lacks; every one with `seed`) and record each as it
    finishes."""
    if backend not in RUNNERS:
        raise CubesearchError(f"unknown backend {backend!r} (choose from {', '.join(RUNNERS)})")
    if not jobs:
        return
    bar = eta_bar("map", console, enabled=progress, status="{task.description}")
    with bar:
        task = bar.add_task("", total=len(jobs))

        def done(cell: dict[str, Any]) -> None:
            store.add(cell)
            bar.update(task, advance=1, description=f"{cell['site']} {cell['option']}: "
                                                    f"ΔIoU {cell['delta_iou']:+.4f}")

        if backend == "local":
            for job in jobs:
                done(measure_cell(ctx, job, base_iou, seed))
        else:
            _run_ray(ctx, jobs, base_iou, seed, done)


def _ray_cell(ctx: SearchContext, job: CellJob, base_iou: float, seed: int, cwd: str
              ) -> dict[str, Any]:
    """A Ray task: one cell, on as many threads as the task's CPUs."""
    import torch

    if Path(cwd).is_dir():
        os.chdir(cwd)  # relative model paths as the driver sees them
    torch.set_num_threads(max(1, int(ctx.settings.cpus_per_trial)))
    return measure_cell(ctx, job, base_iou, seed)


def _run_ray(ctx: SearchContext, jobs: Sequence[CellJob], base_iou: float, seed: int,
             done: Done) -> None:
    """Cells as Ray tasks, at most as many at once as the cluster fits (or `--max-concurrent`)."""
    ray = require_ray()
    s = ctx.settings
    started = connect(s)
    try:
        # the Ray backend's module imports Ray Tune: imported by name, when a map runs on Ray
        resources = import_named(f"{RAY_BACKEND}:check_resources")(s)
        concurrent = s.max_concurrent or import_named(f"{RAY_BACKEND}:default_concurrency")(s, resources)
        task = ray.remote(num_cpus=s.cpus_per_trial, num_gpus=s.gpus_per_trial,
                          max_retries=2)(_ray_cell)
        shared = ray.put(dataclasses.replace(ctx, evaluator=None))
        queue, running = list(jobs), {}
        while queue or running:
            while queue and len(running) < concurrent:
                job = queue.pop(0)
                running[task.remote(shared, job, base_iou, seed, os.getcwd())] = job
            finished, _ = ray.wait(list(running), num_returns=1)
            for ref in finished:
                job = running.pop(ref)
                try:
                    done(ray.get(ref))
                except ray.exceptions.RayError as exc:
                    raise CubesearchError(f"map cell {job.site} {job.option.name}: the Ray task "
                                          f"failed: {str(exc).strip().splitlines()[-1]}") from None
    finally:
        if started:
            ray.shutdown()

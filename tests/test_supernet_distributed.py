"""Data-parallel supernet training (issue 17): after one step, N DistributedDataParallel workers
hold the same parameters as one process that runs the same global batch as the same N shards
(gradients accumulated, each loss scaled 1/N; BatchNorm per shard, as on the workers).

The fast test runs the two ranks as two torch.multiprocessing processes on gloo; the slow one
runs them through Ray Train's TorchTrainer (`train_supernet_distributed`) on a local Ray
instance with 2 CPUs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from cubesearch.errors import CubesearchError
from cubesearch.supernet.train import ShardSampler, SupernetTrainConfig, SupernetTrainer

TESTS = Path(__file__).parent
ASSETS = TESTS / "assets"
sys.path.insert(0, str(ASSETS))
from tiny_seg import build_model  # noqa: E402

SIZE = 32
WORLD = 2


@pytest.fixture(autouse=True)
def _one_thread():
    """One thread here, as on the workers: the same kernels, the same float rounding (Adam's
    first step is ± lr wherever a gradient is rounding noise, so rounding must agree)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _setup():
    """The tiny supernet (seeded: the same in every process), 16 tiles, and a config whose
    global batch of 2 × 4 tiles makes 0.5 epoch exactly one step (after 2 distillation steps)."""
    from cubesearch.data import make_datasets
    from cubesearch.sites import find_sites
    from cubesearch.space import SearchSpace
    from cubesearch.supernet import build_supernet

    torch.manual_seed(0)
    model = build_model()
    space = SearchSpace.from_dict({"name": "test", "sites": "all", "mode": "per_site", "knobs": {
        "lattice_stride": [1, 2], "groups": [1, 4], "router": ["pre", "none"], "depth": [1, 2]}})
    sn = build_supernet(model, find_sites(model, (3, SIZE, SIZE)), space)
    train_ds, _ = make_datasets("synthetic", SIZE, train_tiles=16, val_tiles=4, seed=0)
    cfg = SupernetTrainConfig(epochs=0.5, distill_steps=2, batch_size=4, random_paths=2,
                              calib_batches=1, lr=1e-2, seed=0)
    return sn, train_ds, cfg


def _params(sn):
    return {k: v.detach().clone() for k, v in sn.net.named_parameters()}


def _check_against_reference(trained: dict, start: dict, tmp_path: Path) -> None:
    """`trained` (the workers' parameters) equals the sharded single-process run, and moved."""
    sn, train_ds, cfg = _setup()
    result = SupernetTrainer(sn, train_ds, cfg, shards=WORLD, out=tmp_path / "reference").run()
    assert result.done and result.steps_per_epoch == 2 and result.passes == pytest.approx(
        1 / 3 * 2 + 1 + 3)  # 2 distillation batches, then one step of 4 paths
    ref = _params(sn)
    assert set(ref) == set(trained)
    diff = max((ref[k] - trained[k]).abs().max().item() for k in ref)
    moved = max((start[k] - trained[k]).abs().max().item() for k in ref)
    assert diff < 1e-5, diff
    assert moved > 1e-3, moved  # the step changed the weights: the comparison can fail


# --- fast: two gloo processes --------------------------------------------------------------------


def _rank(rank: int, world: int, folder: str) -> None:
    """One DDP rank (torch.multiprocessing): the trainer with its shard and DDP as its wrap."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank,
                            world_size=world)
    try:
        sn, train_ds, cfg = _setup()
        if rank:  # ranks start from other block weights: DDP hands rank 0's on
            torch.manual_seed(rank)
            for p in sn.block_parameters():
                p.data.normal_()
        trainer = SupernetTrainer(sn, train_ds, cfg, shards=world, rank=rank, out=f"{folder}/dist",
                                  wrap=lambda net: DistributedDataParallel(
                                      net, find_unused_parameters=True, broadcast_buffers=False))
        trainer.run()
        torch.save(_params(sn), f"{folder}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_ddp_ranks_match_the_sharded_single_process_run(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_rank, args=(WORLD, str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0])  # in step
    sn, *_ = _setup()
    _check_against_reference(ranks[0], _params(sn), tmp_path)
    # rank 0 wrote the single-process trainer's checkpoint layout; only rank 0 wrote
    state = json.loads((tmp_path / "dist" / "state.json").read_text())
    assert state["stage"] == "done" and state["shards"] == WORLD
    files = sorted(p.name for p in (tmp_path / "dist").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "reference").iterdir())
    # the shards are a run's identity: another global batch is refused, not mixed in
    sn, train_ds, cfg = _setup()
    with pytest.raises(CubesearchError, match="2 shard"):
        SupernetTrainer(sn, train_ds, cfg, out=tmp_path / "dist").run()


def test_shards_cut_one_permutation_into_global_batches():
    gen = torch.Generator().manual_seed(3)
    full = list(ShardSampler(18, 2, 4, range(4), gen))
    gen.manual_seed(3)
    perm = torch.randperm(18, generator=gen).tolist()
    assert full == [perm[:8], perm[8:16]]  # the last 2 tiles dropped
    for r in range(4):
        gen.manual_seed(3)
        assert list(ShardSampler(18, 2, 4, range(r, r + 1), gen)) == [b[2 * r:2 * r + 2]
                                                                        for b in full]
    with pytest.raises(CubesearchError, match="shards"):
        sn, train_ds, cfg = _setup()
        SupernetTrainer(sn, train_ds, cfg, shards=2, rank=2)


# --- slow: Ray Train ----------------------------------------------------------------------------


@pytest.mark.slow
def test_ray_train_workers_match_the_sharded_single_process_run(tmp_path):
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.train.torch")
    from cubesearch.supernet.distributed import train_supernet_distributed

    env = {"PYTHONPATH": f"{ASSETS}:{TESTS}", "OMP_NUM_THREADS": "1"}
    ray.init(address="local", num_cpus=WORLD, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": env})
    try:
        sn, train_ds, cfg = _setup()
        start = _params(sn)
        lines = []
        # "interrupted" after the distillation, then resumed by a second run of workers
        first = train_supernet_distributed(sn, train_ds, cfg, workers=WORLD, out=tmp_path / "ray",
                                           log=lines.append, use_gpu=False, stop_after_epochs=0)
        assert not first.done
        assert json.loads((tmp_path / "ray" / "state.json").read_text())["stage"] == "distilled"
        assert any("2 Ray Train workers" in line for line in lines)
        assert any("distillation" in line for line in lines)  # rank 0's lines reach the driver
        result = train_supernet_distributed(sn, train_ds, cfg, workers=WORLD, out=tmp_path / "ray",
                                            log=lines.append, use_gpu=False)
        assert result.done and result.resumed_from == "distill"
        _check_against_reference(_params(sn), start, tmp_path)
        # finished: a second call reads the folder back instead of training again
        again = train_supernet_distributed(sn, train_ds, cfg, workers=WORLD, out=tmp_path / "ray")
        assert again.done and again.resumed_from == "final"
    finally:
        ray.shutdown()


def test_the_evaluator_keys_a_data_parallel_supernet_apart(tmp_path):
    from types import SimpleNamespace

    from cubesearch.search import SupernetEvaluator
    from cubesearch.supernet.distributed import train_supernet_distributed

    settings = SimpleNamespace(lr=1e-3, batch_size=8, seed=0, fine_tune_lr=lambda _b: 2.5e-4)
    space = SimpleNamespace(model_dump=lambda mode: {"name": "test"})
    ctx = SimpleNamespace(settings=settings, space=space, baseline_dir=tmp_path / "base",
                          out=tmp_path, budget_flops=1e9)
    one, again, two = (SupernetEvaluator(workers=n).folder(ctx) for n in (1, 1, 2))
    assert one == again != two and one.parent == two.parent
    with pytest.raises(CubesearchError, match="at least 1"):
        sn, train_ds, cfg = _setup()
        train_supernet_distributed(sn, train_ds, cfg, workers=0)

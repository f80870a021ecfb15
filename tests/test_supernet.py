"""The supernet (issue 16): weight sharing as specified, extract == supernet, BatchNorm
re-estimation restores the statistics, training resumes, scoring is deterministic, clear errors."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cubesearch.blocks import CubeConfig
from cubesearch.errors import CubesearchError
from cubesearch.sites import find_sites
from cubesearch.supernet import Supernet, build_supernet, fusion_slice
from cubesearch.supernet.score import Scorer, reestimated
from cubesearch.supernet.train import SupernetTrainConfig, SupernetTrainer

ASSETS = Path(__file__).parent / "assets"
sys.path.insert(0, str(ASSETS))
from tiny_seg import build_model  # noqa: E402

SIZE = 32
KNOB_VALUES = {"lattice_stride": [1, 2], "groups": [1, 2, 4], "router": ["pre", "post", "none"],
               "attention": [True, False], "depth": [1, 2], "fusion_kernel": [1, 3],
               "act": ["gelu", "relu"]}


def _space(**knobs):
    from cubesearch.space import SearchSpace

    return SearchSpace.from_dict({"name": "test", "sites": "all", "mode": "per_site",
                                  "min_lattice_q": 1, "knobs": knobs or KNOB_VALUES})


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one thread is faster, and much faster when other jobs share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = build_model()
    return model, find_sites(model, (3, SIZE, SIZE))


@pytest.fixture
def supernet(tiny):
    model, report = tiny
    torch.manual_seed(0)
    return build_supernet(model, report, _space())


def _randomise_norms(module):
    g = torch.Generator().manual_seed(1)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.5)


def _cfg(**kw):
    base = dict(lattice_stride=2, groups=4, router="pre", attention=True, depth=1, fusion_kernel=3,
                act="gelu")
    return CubeConfig(**{**base, **kw})


# --- weight sharing -------------------------------------------------------------------------------


def _used_params(site, cfg, x):
    site.zero_grad(set_to_none=True)
    site.run(x, cfg).square().mean().backward()
    return {n for n, p in site.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


def test_shared_tensors_are_one_storage_across_configs(supernet):
    site = supernet.sites["decoder.0.0"]  # 16 → 16 channels
    unit = site.units[0]
    dense = unit.fusion["s2"].weight
    # the 1×1 / G=1 fusion is a view of the dense 3×3 weight, not a copy
    w = unit.fusion_weight(_cfg(groups=1, fusion_kernel=1))
    assert w.untyped_storage().data_ptr() == dense.untyped_storage().data_ptr()
    x = torch.randn(2, 16, 8, 8)
    a = _used_params(site, _cfg(groups=4, fusion_kernel=3, lattice_stride=2), x)
    b = _used_params(site, _cfg(groups=1, fusion_kernel=1, lattice_stride=2, attention=False), x)
    c = _used_params(site, _cfg(lattice_stride=1, router="post", depth=2), x)
    shared = {"units.0.router.conv.weight", "units.0.lattice_weight", "units.0.fusion.s2.weight"}
    assert shared <= a and shared - {"units.0.attention.conv.weight"} <= b
    assert "units.0.attention.conv.weight" in a and "units.0.attention.conv.weight" not in b
    # stride 1 keeps its own fusion, shares the lattice kernel; post has its own router
    assert {"units.0.lattice_weight", "units.0.fusion.s1.weight", "units.0.post_router.conv.weight",
            "units.1.lattice_weight"} <= c
    assert "units.0.fusion.s2.weight" not in c and "units.0.router.conv.weight" not in c
    assert not any(n.startswith("units.1.") for n in a | b)  # depth 1 runs the first unit only


def test_one_by_one_fusion_is_the_centre_tap(supernet):
    site = supernet.sites["decoder.0.0"]
    cfg = _cfg(fusion_kernel=1, groups=1)
    block = supernet.extract({"decoder.0.0": cfg}).get_submodule("decoder.0.0")
    dense = site.units[0].fusion["s2"].weight
    assert torch.equal(block.units[0].fusion.weight, dense[:, :, 1:2, 1:2])
    assert torch.equal(fusion_slice(dense, 1, 1), dense[:, :, 1:2, 1:2])


@pytest.mark.parametrize("groups", [2, 4])
def test_grouped_fusion_is_the_block_diagonal_slice(supernet, groups):
    site = supernet.sites["decoder.0.0"]
    cfg = _cfg(groups=groups, lattice_stride=1)  # fusion 16 → 16
    block = supernet.extract({"decoder.0.0": cfg}).get_submodule("decoder.0.0")
    dense = site.units[0].fusion["s1"].weight
    o, i = dense.shape[0] // groups, dense.shape[1] // groups
    sliced = block.units[0].fusion.weight
    for g in range(groups):
        assert torch.equal(sliced[g * o:(g + 1) * o], dense[g * o:(g + 1) * o, g * i:(g + 1) * i])
    # the grouped conv computes the dense conv with the off-diagonal blocks zeroed
    mask = torch.block_diag(*[torch.ones(o, i)] * groups)[:, :, None, None]
    x = torch.randn(2, dense.shape[1], 6, 6)
    assert torch.allclose(F.conv2d(x, sliced, padding=1, groups=groups),
                          F.conv2d(x, dense * mask, padding=1), atol=1e-5)


# --- extract == supernet ----------------------------------------------------------------------------


def test_extract_equals_supernet_for_random_plans_covering_every_knob(supernet):
    _randomise_norms(supernet)
    supernet.eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    rng = random.Random(0)
    seen = {k: set() for k in KNOB_VALUES}
    for _ in range(14):
        plan = {}
        for name, site in supernet.sites.items():
            if rng.random() < 0.8:
                plan[name] = rng.choice(site.config_list)
        for cfg in plan.values():
            for k in KNOB_VALUES:
                seen[k].add(getattr(cfg, k))
        supernet.set_plan(plan)
        with torch.no_grad():
            ours = supernet(x)
            extracted = supernet.extract().eval()
            theirs = extracted(x)
        assert type(extracted).__name__ == "TinySeg"  # an ordinary converted model
        assert torch.allclose(ours, theirs, atol=1e-5), (plan, (ours - theirs).abs().max())
    assert all(seen[k] == set(v) for k, v in KNOB_VALUES.items()), seen
    supernet.set_plan({})
    with torch.no_grad():  # the conv paths are the model's own convs
        assert torch.allclose(supernet(x), supernet.plain().eval()(x))


# --- BatchNorm re-estimation -----------------------------------------------------------------------


def _stats(module):
    return {k: v.clone() for k, v in module.state_dict().items() if "running" in k or "tracked" in k}


def test_bn_reestimation_restores_the_statistics(supernet):
    from cubesearch.data import make_datasets

    train_ds, val_ds = make_datasets("synthetic", SIZE, train_tiles=16, val_tiles=8, seed=0)
    _randomise_norms(supernet)
    scorer = Scorer(supernet, train_ds, val_ds, calib_batches=2, batch_size=4)
    plan = {"encoder.3.0": _cfg(), "decoder.1.0": _cfg(router="post", depth=2)}
    before = _stats(supernet)
    norms = supernet.changed_norms(plan)
    # the BatchNorms after the first replaced site, and those of the blocks; none before it
    assert supernet.net.encoder[0][1] not in norms and supernet.net.encoder[3][1] in norms
    assert supernet.sites["decoder.1.0"].units[1].post_router.bn in norms
    with supernet.using(plan), reestimated(supernet.net, norms, scorer.batches):
        inside = _stats(supernet)
    assert any(not torch.equal(before[k], inside[k]) for k in before)
    result = scorer(plan)
    assert result["bn_reestimated"] == len(set(map(id, norms)))
    after = _stats(supernet)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert supernet.plan == {}  # the active plan is restored too


# --- training, resuming, determinism -------------------------------------------------------------


def _tiny_training(tmp_path, seed=0):
    from cubesearch.data import make_datasets

    model, report = build_model(), None
    torch.manual_seed(seed)
    model = build_model()
    report = find_sites(model, (3, SIZE, SIZE))
    space = _space(lattice_stride=[1, 2], groups=[1, 4], router=["pre", "none"], depth=[1, 2])
    sn = build_supernet(model, report, space)
    train_ds, val_ds = make_datasets("synthetic", SIZE, train_tiles=16, val_tiles=8, seed=0)
    cfg = SupernetTrainConfig(epochs=2, distill_steps=3, batch_size=8, random_paths=1,
                              calib_batches=2, seed=seed)
    return sn, train_ds, val_ds, cfg


def test_training_runs_resumes_and_scores_deterministically(tmp_path):
    sn, train_ds, val_ds, cfg = _tiny_training(tmp_path)
    out = tmp_path / "sn"
    first = SupernetTrainer(sn, train_ds, cfg, out=out).run(stop_after_epochs=1)  # "interrupted"
    assert not first.done and json.loads((out / "state.json").read_text())["stage"] == "epoch-1"
    # a kill -9 during the next save leaves a stray file: the state still names the last pair
    (out / "ckpt-epoch-002.safetensors").write_bytes(b"half")
    sn2, *_ = _tiny_training(tmp_path)
    resumed = SupernetTrainer(sn2, train_ds, cfg, out=out).run()
    assert resumed.done and resumed.resumed_from == "epoch-001"
    assert resumed.passes == pytest.approx(1 + 2 * 2 * 3)  # 3 distil steps = 1; 2 epochs × 2 steps × 3 paths
    assert resumed.baseline_epochs == pytest.approx(resumed.passes / 2)
    # the uninterrupted run ends with the same weights
    sn3, *_ = _tiny_training(tmp_path)
    SupernetTrainer(sn3, train_ds, cfg, out=tmp_path / "straight").run()
    s2, s3 = sn2.net.state_dict(), sn3.net.state_dict()
    assert all(torch.allclose(s2[k].float(), s3[k].float(), atol=1e-6) for k in s2)
    # scores: deterministic, and the same after save / load
    plan = sn2.sample_plan(random.Random(3))
    a = Scorer(sn2, train_ds, val_ds, calib_batches=2, batch_size=4)(plan)
    b = Scorer(sn3, train_ds, val_ds, calib_batches=2, batch_size=4)(plan)
    assert a["iou"] == b["iou"] and a["loss"] == b["loss"]
    sn2.save(tmp_path / "saved")
    loaded = Supernet.load(tmp_path / "saved", build_model())
    c = Scorer(loaded, train_ds, val_ds, calib_batches=2, batch_size=4)(plan)
    assert c["loss"] == pytest.approx(a["loss"], abs=1e-6)
    # another config is refused on resume rather than mixed in
    other = SupernetTrainConfig(**{**cfg.__dict__, "lr": 1e-3})
    with pytest.raises(CubesearchError, match="other settings"):
        SupernetTrainer(sn2, train_ds, other, out=out).run()


# --- bad input -------------------------------------------------------------------------------------


def test_train_is_the_mode_switch_and_fit_trains(supernet):
    assert supernet.train(False) is supernet and not supernet.net.training
    assert supernet.train() is supernet and supernet.net.training
    with pytest.raises(TypeError, match=r"Supernet.fit\(data"):
        supernet.train([1, 2, 3])  # a dataset, as the old train(data) took


def test_bad_plans_are_clear_errors(tiny):
    model, report = tiny
    sn = build_supernet(model, report, _space(act=["gelu"], depth=[1]))
    with pytest.raises(CubesearchError, match="does not have.*did you mean 'decoder.0.0'"):
        sn.set_plan({"decoder.0.O": _cfg()})
    with pytest.raises(CubesearchError, match=r"outside the search space: act='relu'"):
        sn.set_plan({"decoder.0.0": _cfg(act="relu")})
    with pytest.raises(CubesearchError, match="depth=2"):
        sn.extract({"decoder.0.0": _cfg(depth=2)})
    with pytest.raises(CubesearchError, match="router='none'"):  # C_in = 3: never 'none' there
        sn.set_plan({"encoder.0.0": _cfg(router="none")})
    with pytest.raises(CubesearchError, match="groups"):
        sn.set_plan({"decoder.0.0": {"groups": 0}})
    from cubesearch.plan import Plan

    with pytest.raises(CubesearchError, match="inserts blocks"):
        sn.set_plan(Plan(model="m", sites={}, insertions={"decoder": _cfg()}))
    assert sn.plan == {}
    with pytest.raises(CubesearchError, match="not a saved supernet"):
        Supernet.load(ASSETS)


# --- real models -------------------------------------------------------------------------------


UNET = str(Path(__file__).parents[1] / "examples" / "unet.py")


@pytest.mark.parametrize("spec", ["smp:Unet:resnet18", UNET])
def test_supernet_trains_and_scores_real_models(spec):
    from cubesearch.data import make_datasets
    from cubesearch.models import load_model

    kwargs = {"width": 8} if spec.endswith(".py") else {}
    try:
        model = load_model(spec, num_classes=1, in_channels=3, **kwargs)
    except TypeError:
        model = load_model(spec, num_classes=1, in_channels=3)
    report = find_sites(model, (3, 64, 64))
    sn = build_supernet(model, report, "default")
    train_ds, val_ds = make_datasets("synthetic", 64, train_tiles=8, val_tiles=4, seed=0)
    result = sn.fit(train_ds, epochs=0.5, distill_steps=1, random_paths=1, batch_size=4,
                    calib_batches=1, budget_flops=0.7 * sn.flops({}))  # a token training: it runs
    assert result.done and result.passes == pytest.approx(1 / 3 + 3)
    scorer = Scorer(sn, train_ds, val_ds, calib_batches=1, batch_size=4)
    plan = sn.sample_plan(random.Random(0), budget_flops=0.7 * sn.flops({}))
    assert plan and sn.flops(plan) <= 0.7 * sn.flops({})
    result = scorer(plan)
    assert 0.0 <= result["iou"] <= 1.0
    sn.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad(), sn.using(plan):
        assert torch.allclose(sn(x), sn.extract().eval()(x), atol=1e-4)


# --- rank agreement (the benchmark's figures) ---------------------------------------------------


def test_rank_correlations_match_hand_computed_examples():
    from cubesearch.supernet.ranking import kendall_tau, ranks, spearman_rho, top_k_overlap

    # 7 concordant, 3 discordant pairs; Σd² = 8 → ρ = 1 − 6·8 / (5·24)
    assert kendall_tau([1, 2, 3, 4, 5], [3, 1, 2, 5, 4]) == pytest.approx(0.4)
    assert spearman_rho([1, 2, 3, 4, 5], [3, 1, 2, 5, 4]) == pytest.approx(0.6)
    # a tie in x: τ-b = 5 / sqrt(5·6); ρ on average ranks [1, 2.5, 2.5, 4] = 4.5 / sqrt(4.5·5)
    assert ranks([1, 2, 2, 3]) == [1, 2.5, 2.5, 4]
    assert kendall_tau([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(5 / 30 ** 0.5)
    assert spearman_rho([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(4.5 / 22.5 ** 0.5)
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert top_k_overlap([5, 4, 3, 2, 1], [5, 1, 4, 3, 2], k=3) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        kendall_tau([1, 2], [1])


_KILL_SCRIPT = """
import sys, torch
torch.set_num_threads(1)
sys.path.insert(0, {assets!r})
sys.path.insert(0, {tests!r})
from test_supernet import _tiny_training
from cubesearch.supernet.train import SupernetTrainer
sn, train_ds, _, cfg = _tiny_training(None)
cfg.epochs = 6
SupernetTrainer(sn, train_ds, cfg, out={out!r}).run()
"""


@pytest.mark.slow
def test_training_resumes_after_kill_9(tmp_path):
    import os
    import signal
    import subprocess
    import time

    out = tmp_path / "sn"
    script = _KILL_SCRIPT.format(assets=str(ASSETS), tests=str(Path(__file__).parent), out=str(out))
    proc = subprocess.Popen([sys.executable, "-c", script])
    state = out / "state.json"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if state.exists() and json.loads(state.read_text())["stage"] == "epoch-2":
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the training ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    sn, train_ds, _, cfg = _tiny_training(tmp_path)
    cfg.epochs = 6
    result = SupernetTrainer(sn, train_ds, cfg, out=out).run()
    assert result.done and result.resumed_from.startswith("epoch-")
    straight, *_ = _tiny_training(tmp_path)
    SupernetTrainer(straight, train_ds, cfg, out=tmp_path / "straight").run()
    a, b = sn.net.state_dict(), straight.net.state_dict()
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)

"""The analytic cost model equals fvcore's count of the converted model, on every model the
convert tests use, for several random plans (random sites, random knobs, insertions); and it
is cheap per plan."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from cubesearch.blocks import CubeConfig, block_cost
from cubesearch.core.errors import CubesearchError
from cubesearch.cost.pricing import CostModel, count_flops, count_params, reference_flops
from cubesearch.models.load import load_model
from cubesearch.plan.conversion import convert
from cubesearch.plan.plan import Plan, router_problem
from cubesearch.plan.sites import find_sites

ROOT = Path(__file__).resolve().parents[1]
UNET = str(ROOT / "examples" / "unet.py")
TINY = str(ROOT / "tests" / "assets" / "tiny_seg.py")

# (spec, factory kwargs, input H=W, insertion points): the models of test_convert.py.
MODELS = [
    (TINY, {}, 32, ["encoder.3"]),
    (UNET, {"width": 4}, 64, ["bottleneck"]),
    ("smp:Unet:resnet18", {}, 64, []),
    ("smp:UnetPlusPlus:resnet18", {}, 64, []),
    ("smp:MAnet:resnet18", {}, 64, []),
    ("smp:Linknet:resnet18", {}, 64, []),
    ("smp:FPN:resnet18", {}, 64, []),
    ("smp:PSPNet:resnet18", {}, 64, []),
    ("smp:DeepLabV3:resnet18", {}, 64, []),
    ("smp:DeepLabV3Plus:resnet18", {}, 64, []),
    ("smp:PAN:resnet18", {}, 128, []),
    ("smp:UPerNet:resnet18", {}, 64, []),
    ("smp:Segformer:mit_b0", {}, 64, ["decoder.fuse_stage"]),
    ("smp:DPT:tu-vit_tiny_patch16_224", {"dynamic_img_size": True}, 64, []),
    ("timm:resnet18", {}, 64, []),
    ("timm:mobilevit_xxs", {}, 64, []),
    ("timm:coatnet_nano_rw_224", {"img_size": 64}, 64, []),
]


def random_config(rng: random.Random) -> CubeConfig:
    return CubeConfig(lattice_stride=rng.choice([1, 2]), groups=rng.choice([1, 2, 4, 8]),
                      router=rng.choice(["pre", "post", "none"]), attention=rng.random() < 0.5,
                      depth=rng.choice([1, 1, 2]), fusion_kernel=rng.choice([1, 3]),
                      act=rng.choice(["gelu", "relu"]))


def random_plan(report, spec: str, rng: random.Random, insertions=()) -> Plan:
    sites = {}
    for s in report.sites:
        if rng.random() < 0.5:
            cfg = random_config(rng)
            if router_problem(s.in_channels, s.out_channels, cfg):
                cfg = cfg.model_copy(update={"router": "pre"})
            sites[s.name] = cfg
    inserts = {n: random_config(rng).model_copy(update={"router": "pre"}) for n in insertions}
    return Plan(model=spec, input_size=report.input_size, sites=sites, insertions=inserts)


def _cases():
    """Every model, one random plan and the all-default plan; `-m slow` adds 3 random plans."""
    for n_random, marks in ((1, ()), (3, pytest.mark.slow)):
        for spec, kwargs, hw, insertions in MODELS:
            name = spec.rsplit("/", 1)[-1] + ("-more" if marks else "")
            yield pytest.param(spec, kwargs, hw, insertions, n_random, not marks, id=name,
                               marks=marks)


@pytest.mark.parametrize(("spec", "kwargs", "hw", "insertions", "n_random", "full"),
                         list(_cases()))
def test_cost_model_equals_fvcore(spec, kwargs, hw, insertions, n_random, full):
    model = load_model(spec, **kwargs)
    size = (3, hw, hw)
    # strided and depthwise sites too: their blocks carry the stride / replace a grouped conv
    report = find_sites(model, size, strided=True, depthwise=True, insertions=insertions)
    assert report.base_flops is not None  # find_sites' fvcore count, reference_flops(model)
    cost = CostModel.from_report(report)
    assert cost.cost(Plan(model=spec)) == (report.base_flops, count_params(model))
    rng = random.Random(sum(map(ord, spec)) + n_random)  # hash() of a str changes between runs
    plans = [random_plan(report, spec, rng, insertions) for _ in range(n_random)]
    if full:  # and every site with the paper's default block
        plans.append(Plan(model=spec, input_size=size, sites={s.name: CubeConfig() for s in report}))
    for plan in plans:
        converted = convert(model, plan)
        fv = reference_flops(converted, size)
        flops, params = cost.cost(plan)
        assert abs(flops - fv) <= 1e-3 * fv, (plan.sites, flops, fv)
        assert flops == fv  # in fact exact, as fvcore counts
        assert params == count_params(converted)
        assert cost.gflops(plan) == fv / 1e9 and cost.params(plan) == params


def test_site_delta_by_formula():
    """One site by hand: base − conv MACs + block FLOPs at each call's shape."""
    conv = nn.Conv2d(8, 8, 3, padding=1, bias=False)
    model = nn.Sequential(conv, nn.MaxPool2d(2), conv)  # called at 16×16 and 8×8
    report = find_sites(model, (8, 16, 16))
    cfg = CubeConfig(groups=2)
    cost = CostModel(report)
    conv_macs = 8 * 8 * 9 * (16 * 16 + 8 * 8)
    assert report.base_flops == conv_macs  # fvcore does not count max pooling
    block = [block_cost(8, 8, cfg, 1, h, h, training=False) for h in (16, 8)]
    assert cost.site_delta("0", cfg) == (block[0].flops + block[1].flops - conv_macs,
                                         block[0].params - 8 * 8 * 9)
    plan = Plan(model="x.py", input_size=(8, 16, 16), sites={"0": cfg})
    assert cost.flops(plan) == reference_flops(convert(model, plan), (8, 16, 16))


def test_convs_that_do_more_than_their_macs():
    """timm's StdConv2d / ScaledStdConv2d standardise their weight in forward (fvcore counts a
    batch_norm over the weight): replacing them removes that work too."""
    from timm.layers import ScaledStdConv2d, StdConv2d

    model = nn.Sequential(StdConv2d(4, 8, 3), nn.ReLU(), ScaledStdConv2d(8, 8, 3))
    report = find_sites(model, (4, 16, 16))
    assert report.names == ["0", "2"]
    for s in report.sites:
        assert s.flops > s.macs == 8 * s.in_channels * 9 * 16 * 16
    cost = CostModel(report)
    for sites in ({"0": CubeConfig()}, {"2": CubeConfig(groups=2)},
                  {"0": CubeConfig(), "2": CubeConfig(depth=2)}):
        plan = Plan(model="x.py", input_size=(4, 16, 16), sites=sites)
        assert cost.flops(plan) == reference_flops(convert(model, plan), (4, 16, 16))


def test_training_mode_pricing():
    """training=True prices train-mode BatchNorm (5·numel), given a base counted in train mode."""
    model = load_model(UNET, width=4)
    size = (3, 32, 32)
    report = find_sites(model, size, flops=False)
    model.train()
    base = count_flops(model, size, batch=2) // 2
    cost = CostModel(report.sites, base, count_params(model), training=True)
    plan = Plan(model=UNET, input_size=size, sites={s.name: CubeConfig() for s in report})
    converted = convert(model, plan).train()
    assert cost.flops(plan) == count_flops(converted, size, batch=2) // 2


def test_cost_model_is_fast():
    model = load_model("smp:Unet:resnet18")
    report = find_sites(model, (3, 64, 64))
    cost = CostModel(report)
    rng = random.Random(0)
    configs = [random_config(rng).model_copy(update={"router": "pre"}) for _ in range(8)]
    cost.precompute(configs)
    plans = [{s.name: rng.choice(configs) for s in report if rng.random() < 0.5}
             for _ in range(2000)]
    t0 = time.perf_counter()
    for p in plans:
        cost.flops(p)
    per_plan = (time.perf_counter() - t0) / len(plans)
    assert per_plan < 5e-3  # measured ~5 µs; loose bound for a shared machine


def test_cost_model_errors():
    report = find_sites(load_model(TINY), (3, 32, 32), flops=False)
    with pytest.raises(CubesearchError, match=r"needs the model's fvcore FLOPs"):
        CostModel(report)
    cost = CostModel(report.sites, 1000, 10)
    with pytest.raises(CubesearchError, match=r"unknown site 'decoder.0.9' \(did you mean"):
        cost.flops({"decoder.0.9": CubeConfig()})
    with pytest.raises(CubesearchError, match=r"no output shape recorded for insertion point "
                                              r"'decoder'"):
        cost.flops({}, insertions={"decoder": CubeConfig()})


def test_count_flops_modes_and_errors():
    model = load_model(TINY)
    train = count_flops(model.train(), (3, 32, 32), batch=2)
    evalf = reference_flops(model, (3, 32, 32), batch=2)
    assert model.training  # reference_flops restores the mode
    n_bn = sum(m.num_features for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert n_bn > 0
    # fvcore: BatchNorm is 5·numel in train mode, 2·numel in eval; the rest is the same
    sizes: list[int] = []
    hooks = [m.register_forward_hook(lambda m, i, o: sizes.append(o.numel()))
             for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        model.eval()(torch.zeros(2, 3, 32, 32))
    for h in hooks:
        h.remove()
    bn_numel = sum(sizes)
    assert train - evalf == 3 * bn_numel
    pooled = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.BatchNorm2d(3)).train()
    with pytest.raises(CubesearchError, match=r"fvcore could not count FLOPs at 1×3×8×8: .*"
                                              r"train-mode BatchNorm needs batch > 1"):
        count_flops(pooled, (3, 8, 8))

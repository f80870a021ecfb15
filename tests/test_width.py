"""Channel width as a plan option (`Plan.widths`, `cubesearch.plan.width`): the kept count, the kept
filters (largest L1, against a manual computation), the cut carried to the BatchNorm and the next
conv, the cost on the built model (against fvcore and the arithmetic of the cut), a mixed plan
(a narrowed conv feeding a Cube site and an insertion), a checkpoint round trip, and the errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from cubesearch.blocks import CubeBlock, CubeConfig
from cubesearch.core.errors import CubesearchError
from cubesearch.cost.pricing import CostModel, count_params, plan_flops_params, reference_flops
from cubesearch.models.load import load_model
from cubesearch.plan.checkpoint import load, save
from cubesearch.plan.conversion import convert, cube_blocks
from cubesearch.plan.plan import Plan
from cubesearch.plan.sites import find_sites
from cubesearch.plan.width import kept_channels, narrow, smallest_filters

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "tests" / "assets" / "tiny_seg.py")
sys.path.insert(0, str(ROOT / "tests" / "assets"))
from tiny_seg import TinySeg  # noqa: E402

SIZE = (3, 32, 32)


def _tiny(width: int = 16, classes: int = 1) -> nn.Module:
    model = TinySeg(num_classes=classes, width=width)
    for m in model.modules():  # BatchNorm statistics that are not the identity
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
    return model.eval()


def _plan(**kw) -> Plan:
    return Plan(model=TINY, input_size=SIZE, **kw)


@pytest.mark.parametrize("c_out,ratio,kept", [
    (32, 0.5, 16), (32, 0.25, 8), (32, 0.75, 24), (64, 0.3, 16), (64, 0.32, 24),
    (16, 0.75, 8),  # 12 rounds up to 16 = C_out: held at the largest multiple of 8 below it
    (24, 0.9, 16), (20, 0.5, 8), (12, 0.1, 8), (256, 0.5, 128), (96, 0.25, 24)])
def test_kept_channels_round_to_multiples_of_8(c_out, ratio, kept):
    assert kept_channels(c_out, ratio) == kept
    assert kept % 8 == 0 and 8 <= kept < c_out


@pytest.mark.parametrize("ratio", [0, 1, -0.5, 1.5, float("nan")])
def test_a_width_outside_0_1_is_one_line(ratio):
    with pytest.raises(CubesearchError, match=r"widths: 'encoder.1.0': width .* \(give 0 < R < 1\)"
                       ) as err:
        _plan(widths={"encoder.1.0": ratio})
    assert "\n" not in str(err.value)
    with pytest.raises(CubesearchError, match="between 0 and 1"):
        kept_channels(32, ratio)


def test_a_conv_is_cube_or_narrowed_not_both():
    with pytest.raises(CubesearchError, match="'decoder.0.0' is both a Cube site and narrowed"):
        _plan(sites={"decoder.0.0": {}}, widths={"decoder.0.0": 0.5})


def test_narrowing_keeps_the_largest_l1_filters_and_cuts_what_depends_on_them():
    model = _tiny()
    old = {k: v.clone() for k, v in model.state_dict().items()}
    l1 = old["encoder.1.0.weight"].abs().sum(dim=(1, 2, 3))
    keep = sorted(torch.topk(l1, 16).indices.tolist())  # manual: the 16 largest of 32
    new = convert(model, _plan(widths={"encoder.1.0": 0.5}))
    state = new.state_dict()
    assert torch.equal(state["encoder.1.0.weight"], old["encoder.1.0.weight"][keep])
    for key in ("weight", "bias", "running_mean", "running_var"):
        assert torch.equal(state[f"encoder.1.1.{key}"], old[f"encoder.1.1.{key}"][keep])
    assert torch.equal(state["encoder.3.0.weight"], old["encoder.3.0.weight"][:, keep])
    assert new.encoder[3][0].in_channels == 16 and new.encoder[1][0].out_channels == 16
    assert model.encoder[1][0].out_channels == 32  # the input model is left as it was
    x = torch.randn(2, *SIZE)
    assert new(x).shape == model(x).shape == (2, 1, 32, 32)
    # what the narrowed model computes is the baseline's with those channels dropped
    feats = model.encoder[1](model.encoder[0](x))[:, keep]
    assert torch.allclose(new.encoder[1](new.encoder[0](x)), feats, atol=1e-6)
    assert smallest_filters(model.encoder[1][0], 16) == sorted(set(range(32)) - set(keep))


def test_the_cost_is_fvcore_on_the_built_model_and_the_arithmetic_of_the_cut():
    model = _tiny()
    plan = _plan(widths={"encoder.1.0": 0.5})
    flops, params = plan_flops_params(model, plan)
    built = convert(model, plan)
    assert (flops, params) == (reference_flops(built, SIZE), count_params(built))
    # encoder.1.0 (16 → 32 at 32×32) keeps 16 filters; its BatchNorm (2 FLOPs per element in
    # eval, 2 parameters per channel) loses 16 channels; encoder.3.0 (at 16×16) 16 inputs
    base_flops, base_params = reference_flops(model, SIZE), count_params(model)
    assert base_flops - flops == 16 * 16 * 9 * 32 * 32 + 2 * 16 * 32 * 32 + 32 * 16 * 9 * 16 * 16
    assert base_params - params == 16 * 16 * 9 + 2 * 16 + 32 * 16 * 9
    assert plan_flops_params(lambda: model, plan) == (flops, params)  # a factory works too
    report = find_sites(model, SIZE)
    with pytest.raises(CubesearchError, match="plan_flops_params"):
        CostModel(report).flops(plan)


def test_a_cube_only_plan_costs_the_same_on_the_built_model_as_in_the_cost_model():
    model = _tiny()
    plan = _plan(sites={"decoder.0.0": CubeConfig(), "encoder.3.0": CubeConfig(router="post")})
    report = find_sites(model, SIZE)
    assert plan_flops_params(model, plan) == CostModel(report).cost(plan)


def test_a_narrowed_conv_feeding_a_cube_site_and_an_insertion():
    model = _tiny()
    cfg = CubeConfig(groups=2)
    plan = _plan(widths={"encoder.1.0": 0.5, "decoder.0.0": 0.25},
                 sites={"encoder.3.0": cfg, "decoder.1.0": cfg}, insertions={"encoder.1": cfg})
    new = convert(model, plan)
    blocks = cube_blocks(new)
    assert (blocks["encoder.3.0"].in_channels, blocks["encoder.3.0"].out_channels) == (16, 32)
    assert (blocks["decoder.1.0"].in_channels, blocks["decoder.1.0"].out_channels) == (8, 16)
    assert blocks["encoder.1.cube_block"].in_channels == 16  # after the narrowed module
    new.train()
    y = new(torch.randn(2, *SIZE))
    assert y.shape == (2, 1, 32, 32)
    y.mean().backward()
    flops, _ = plan_flops_params(model, plan)
    assert flops == reference_flops(new, SIZE)


def test_a_narrowed_model_round_trips_through_a_checkpoint(tmp_path):
    model = load_model(TINY).eval()  # width 8: channels 8, 16, 16, 16, 8
    plan = Plan(model=TINY, model_kwargs={}, input_size=SIZE, widths={"encoder.3.0": 0.5},
                sites={"decoder.0.0": CubeConfig()})
    new = convert(model, plan)
    for m in new.modules():  # make the saved weights differ from a fresh model's
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
    save(tmp_path / "ckpt", new, plan)
    assert Plan.load(tmp_path / "ckpt").widths == {"encoder.3.0": 0.5}
    back = load(tmp_path / "ckpt", trust_code=True)
    assert back.encoder[3][0].out_channels == 8
    assert isinstance(back.decoder[0][0], CubeBlock) and back.decoder[0][0].in_channels == 8
    x = torch.randn(2, *SIZE)
    assert torch.allclose(back(x), new.eval()(x), atol=1e-6)


def test_plan_json_has_widths_only_when_there_are_some(tmp_path):
    plain = _plan(sites={"decoder.0.0": {}})
    assert "widths" not in plain.to_dict()
    narrowed = _plan(widths={"decoder.0.0": 0.25})
    narrowed.save(tmp_path / "plan.json")
    assert Plan.load(tmp_path / "plan.json") == narrowed


def test_narrowing_errors():
    model = _tiny(classes=16)
    with pytest.raises(CubesearchError, match="'head' cannot be narrowed: it changes the model's "
                                              "output"):
        convert(model, _plan(widths={"head": 0.5}))
    with pytest.raises(CubesearchError, match="cannot narrow 'encoder.0.0': it has 8 output"):
        convert(_tiny(width=8), _plan(widths={"encoder.0.0": 0.5}))
    with pytest.raises(CubesearchError, match="'encoder.1.1', which is not an nn.Conv2d"):
        convert(model, _plan(widths={"encoder.1.1": 0.5}))
    with pytest.raises(CubesearchError, match="'encoder.9', which does not exist"):
        convert(model, _plan(widths={"encoder.9": 0.5}))
    report = find_sites(model, SIZE, flops=False)
    with pytest.raises(CubesearchError, match="plan narrows 'decoder.0.1', which is not a conv"):
        _plan(widths={"decoder.0.1": 0.5}).check(report)
    _plan(widths={"head": 0.5, "encoder.1.0": 0.5}).check(report)  # a 1×1 conv may be narrowed


class Residual(nn.Module):
    """a → b, then a + b(a): a's and b's output channels are one coupled group."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 32, 3, padding=1)
        self.b = nn.Conv2d(32, 32, 3, padding=1)
        self.head = nn.Conv2d(32, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        return self.head(y + self.b(y))


def test_coupled_convs_are_cut_together_and_must_share_a_width():
    model = Residual().eval()
    narrow(model, {"b": 0.5}, SIZE)
    assert model.a.out_channels == model.b.out_channels == model.head.in_channels == 16
    assert model(torch.zeros(1, *SIZE)).shape == (1, 2, 32, 32)
    narrow(model2 := Residual().eval(), {"a": 0.5, "b": 0.5}, SIZE)
    assert model2.a.out_channels == 16
    with pytest.raises(CubesearchError, match="'b' shares its output channels .* give coupled "
                                              "convs the same width"):
        narrow(Residual().eval(), {"a": 0.5, "b": 0.75}, SIZE)


def test_a_plan_with_widths_warm_starts_from_the_narrowed_baseline(tmp_path):
    from cubesearch.training import load_init, train, warm_source
    from cubesearch.training.data import make_datasets

    baseline = load_model(TINY).eval()  # width 8; stands for a trained baseline
    save(tmp_path / "baseline", baseline, Plan(model=TINY, input_size=SIZE))
    plan = Plan(model=TINY, model_kwargs={"num_classes": 1, "in_channels": 3}, input_size=SIZE,
                widths={"encoder.3.0": 0.5}, sites={"decoder.0.0": CubeConfig()})
    model = convert(load_model(TINY), plan)  # a fresh model: its own (random) filters kept
    l1 = baseline.encoder[3][0].weight.abs().sum(dim=(1, 2, 3))
    keep = sorted(torch.topk(l1, 8).indices.tolist())
    source = warm_source(tmp_path / "baseline", plan)
    assert warm_source(source, plan) is source  # narrowed by these widths already
    report = load_init(model, source)
    assert torch.equal(model.encoder[3][0].weight, baseline.encoder[3][0].weight[keep])
    assert torch.equal(model.decoder[0][1].running_mean, baseline.decoder[0][1].running_mean)
    blocks = {k for k in model.state_dict() if k.startswith("decoder.0.0.")}
    assert report["loaded"] == report["total"] - len(blocks) and report["shape_mismatch"] == 0
    data = make_datasets("synthetic", 32, train_tiles=16, val_tiles=8, seed=0)
    r = train(TINY, plan=plan, data=data, steps=1, distill_steps=2, init_from=tmp_path / "baseline",
              input_size=SIZE, batch_size=8, progress=False)
    assert r.distill["steps"] == 2 and r.init["loaded"] == report["loaded"]
    with pytest.raises(CubesearchError, match="narrowed already"):
        narrow(source, {"encoder.1.0": 0.5}, SIZE)

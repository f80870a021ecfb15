"""Sites: records against hand-computed channels / stride / H×W / MACs / params, roles,
eligibility (default, --depthwise, --strided), a conv called twice, every trace path."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from cubesearch.core.errors import CubesearchError
from cubesearch.cost.pricing import count_flops
from cubesearch.models.load import load_model
from cubesearch.plan.plan import select_sites
from cubesearch.plan.sites import conv_eligibility, find_sites, fx_trace, parse_input_size, role_of, tracing

ROOT = Path(__file__).resolve().parents[1]
UNET = str(ROOT / "examples" / "unet.py")


# --- a hand-written model with one conv of every kind ------------------------------------------


class Hand(nn.Module):
    """64×64 input. backbone.0 eligible; .2 strided; .3 depthwise; .4 dilated; .5 1×1;
    .6 grouped; .7 padding 0 (64→62 would break nothing). `neck` is called twice (at 32×32 and
    16×16); `head.0` is eligible; `unused` is never called; `w` is a functional conv."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),  # 0: eligible, 64×64
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),  # 2: strided, 64 → 32
            nn.Conv2d(16, 16, 3, padding=1, groups=16),  # 3: depthwise, 32
            nn.Conv2d(16, 16, 3, padding=2, dilation=2),  # 4: dilated, 32
            nn.Conv2d(16, 16, 1),  # 5: 1×1, 32
            nn.Conv2d(16, 16, 3, padding=1, groups=4),  # 6: grouped, 32
            nn.Conv2d(16, 16, 3, padding=0),  # 7: padding 0, 32 → 30
        )
        self.neck = nn.Conv2d(16, 16, 3, padding=1, bias=False)  # called at 30×30 and 15×15
        self.head = nn.Sequential(nn.Conv2d(16, 4, 3, padding=1))  # 30×30
        self.unused = nn.Conv2d(4, 4, 3, padding=1)
        self.w = nn.Parameter(torch.randn(4, 4, 3, 3) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.backbone(x)
        y = self.neck(y)
        y = self.neck(F.max_pool2d(y, 2))
        y = F.interpolate(y, size=(30, 30))
        y = self.head(y)
        return F.conv2d(y, self.w, padding=1)  # functional: no module, no site


def _macs(cin: int, cout: int, h: int, w: int, k: int = 3, groups: int = 1) -> int:
    return cout * (cin // groups) * k * k * h * w


HAND_ALL_MACS = (_macs(3, 8, 64, 64) + _macs(8, 16, 32, 32) + _macs(16, 16, 32, 32, groups=16)
                 + _macs(16, 16, 32, 32) + _macs(16, 16, 32, 32, k=1)
                 + _macs(16, 16, 32, 32, groups=4) + _macs(16, 16, 30, 30)
                 + _macs(16, 16, 30, 30) + _macs(16, 16, 15, 15) + _macs(16, 4, 30, 30))


@pytest.fixture(scope="module")
def hand_report():
    torch.manual_seed(0)
    return find_sites(Hand(), (3, 64, 64))


def test_hand_sites(hand_report):
    r = hand_report
    assert r.names == ["backbone.0", "neck", "head.0"]
    b0, neck, head = r.sites
    assert (b0.in_channels, b0.out_channels, b0.stride, b0.kernel, b0.groups) == (3, 8, 1, (3, 3), 1)
    assert (b0.input_hw, b0.output_hw, b0.calls) == ((64, 64), (64, 64), 1)
    assert b0.macs == _macs(3, 8, 64, 64) == 884_736
    assert b0.params == 8 * 3 * 9 + 8 and b0.bias
    # the conv called twice is one site; its MACs sum over both calls
    assert (neck.calls, neck.call_shapes, neck.input_hw) == (2, ((30, 30), (15, 15)), (30, 30))
    assert neck.macs == _macs(16, 16, 30, 30) + _macs(16, 16, 15, 15)
    assert neck.params == 16 * 16 * 9 and not neck.bias
    assert (head.in_channels, head.out_channels, head.input_hw) == (16, 4, (30, 30))
    assert head.macs == _macs(16, 4, 30, 30)
    assert [s.role for s in r.sites] == ["encoder", "decoder", "decoder"]
    # head.0 is the last conv module called and has the output's 4 channels: the prediction conv
    assert [s.prediction for s in r.sites] == [False, False, True]
    assert [s.flops for s in r.sites] == [s.macs for s in r.sites]  # fvcore: a conv is its MACs
    assert r.trace_path == "export"
    assert r.output_shape == (1, 4, 30, 30)


def test_hand_skipped_reasons_and_totals(hand_report):
    r = hand_report
    assert r.skipped == {
        "backbone.2": "stride 2 (use --strided)",
        "backbone.3": "depthwise (use --depthwise)",
        "backbone.4": "dilation 2",
        "backbone.5": "1×1 kernel",
        "backbone.6": "grouped conv (groups=4)",
        "backbone.7": "padding 0",
    }
    assert r.uncalled == ["unused"]
    assert r.conv_macs == HAND_ALL_MACS  # every nn.Conv2d call, not the functional one
    assert r.base_params == sum(p.numel() for p in Hand().parameters())
    assert r.base_flops == count_flops(Hand().eval(), (3, 64, 64))
    assert r.eligible_macs == sum(s.macs for s in r.sites)


def test_depthwise_and_strided_widen_eligibility():
    model = Hand()
    dw = find_sites(model, (3, 64, 64), depthwise=True, flops=False)
    assert dw.names == ["backbone.0", "backbone.3", "neck", "head.0"]
    site = dw.site("backbone.3")
    assert (site.groups, site.depthwise, site.macs, site.params) == (
        16, True, _macs(16, 16, 32, 32, groups=16), 16 * 9 + 16)
    st = find_sites(model, (3, 64, 64), strided=True, flops=False)
    assert st.names == ["backbone.0", "backbone.2", "neck", "head.0"]
    s2 = st.site("backbone.2")
    assert (s2.stride, s2.input_hw, s2.output_hw, s2.macs) == (2, (64, 64), (32, 32),
                                                                _macs(8, 16, 32, 32))
    both = find_sites(model, (3, 64, 64), depthwise=True, strided=True, flops=False)
    assert len(both) == 5 and "backbone.3" not in both.skipped


def test_find_sites_leaves_model_untouched():
    model = Hand().train()
    model.head.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    find_sites(model, (3, 64, 64))
    assert model.training and not model.head.training and model.backbone.training
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


# --- examples/unet.py, hand-computed -----------------------------------------------------------


def test_unet_sites_match_the_architecture():
    width, hw = 4, 64
    r = find_sites(load_model(UNET, width=width), (3, hw, hw))
    w = [width * 2**i for i in range(5)]
    expected = []  # (name, C_in, C_out, H, role)
    for i in range(4):
        expected.append((f"encoder.{i}.0", 3 if i == 0 else w[i - 1], w[i], hw >> i, "encoder"))
        expected.append((f"encoder.{i}.3", w[i], w[i], hw >> i, "encoder"))
    expected += [("bottleneck.0", w[3], w[4], hw >> 4, "encoder"),
                 ("bottleneck.3", w[4], w[4], hw >> 4, "encoder")]
    for k, i in enumerate(reversed(range(4))):
        # Up(w[i+1], w[i]): the transposed conv halves w[i+1] = 2·w[i], concatenated with the skip
        expected.append((f"decoder.{k}.conv.0", w[i] + w[i], w[i], hw >> i, "decoder"))
        expected.append((f"decoder.{k}.conv.3", w[i], w[i], hw >> i, "decoder"))
    got = [(s.name, s.in_channels, s.out_channels, s.input_hw[0], s.role) for s in r.sites]
    assert sorted(got) == sorted(expected)
    for s in r.sites:
        assert s.input_hw == s.output_hw == (s.input_hw[0], s.input_hw[0])
        assert s.macs == _macs(s.in_channels, s.out_channels, *s.input_hw)
        assert s.params == s.in_channels * s.out_channels * 9  # bias=False
        assert s.stride == 1 and s.calls == 1
    assert (len(r.by_role("encoder")), len(r.by_role("decoder"))) == (10, 8)
    assert not any(s.prediction for s in r.sites)  # its logits come from the 1×1 head
    assert r.skipped == {n: "1×1 kernel" for n in ["head"]} | {}
    assert r.output_shape == (1, 1, hw, hw)
    # every conv of the U-Net: the 18 3×3, the 1×1 head (transposed convs are not nn.Conv2d)
    assert r.conv_macs == r.eligible_macs + _macs(w[0], 1, hw, hw, k=1)


def test_the_conv_computing_the_logits_is_marked():
    r = find_sites(load_model("smp:Unet:resnet18", num_classes=2), (3, 64, 64), flops=False)
    assert [s.name for s in r.sites if s.prediction] == ["segmentation_head.0"]
    assert r.site("segmentation_head.0").out_channels == 2 and r.output_shape == (1, 2, 64, 64)
    assert r.to_dict()["sites"][-1]["prediction"] is True

    class Pooled(nn.Module):  # the last conv's 8 channels are averaged into the output's one
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(self.a(x)).mean(1, keepdim=True)

    assert not any(s.prediction for s in find_sites(Pooled(), (3, 16, 16), flops=False).sites)


def test_input_size_the_model_rejects():
    with pytest.raises(CubesearchError, match=r"the model rejects input 1×3×50×50: ValueError: "
                                              r"U-Net needs H and W divisible by 16"):
        find_sites(load_model(UNET, width=2), (3, 50, 50), flops=False)


def test_wrong_channel_count_is_rejected():
    with pytest.raises(CubesearchError, match=r"rejects input 1×4×32×32"):
        find_sites(load_model(UNET, width=2), (4, 32, 32), flops=False)


# --- every trace path --------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["export", "fx", "hooks"])
def test_each_trace_path_gives_the_same_sites(path, hand_report):
    r = find_sites(Hand(), (3, 64, 64), trace=path, flops=False)
    assert r.trace_path == path
    assert [s.flops for s in r.sites] == [None] * 3  # fvcore did not run
    assert [s.to_dict() | {"flops": s.macs} for s in r.sites] == [
        s.to_dict() for s in hand_report.sites]
    assert r.skipped == hand_report.skipped
    assert r.conv_macs == HAND_ALL_MACS
    assert r.output_shape == (1, 4, 30, 30)


@pytest.mark.parametrize("spec", ["smp:Linknet:resnet18", "smp:FPN:resnet18", UNET])
def test_trace_paths_agree_on_shape_dependent_models(spec):
    """smp decoders branch on shapes: fx needs its MetaTracer fallback there."""
    model = load_model(spec, **({"width": 4} if spec == UNET else {}))
    ref = find_sites(model, (3, 64, 64), trace="export", flops=False)
    for path in ("fx", "hooks"):
        r = find_sites(model, (3, 64, 64), trace=path, flops=False)
        assert r.trace_path == path
        assert [s.to_dict() for s in r.sites] == [s.to_dict() for s in ref.sites]
    fx = find_sites(model, (3, 64, 64), trace="fx", flops=False)
    assert any("MetaTracer" in n for n in fx.trace_notes)


@pytest.mark.parametrize("path", ["export", "fx", "hooks"])
def test_conv_registered_twice_is_one_site_on_every_path(path):
    conv = nn.Conv2d(4, 4, 3, padding=1)
    model = nn.Sequential(conv, nn.ReLU(), nn.MaxPool2d(2), conv)  # names 0 and 3, one module
    r = find_sites(model, (4, 16, 16), trace=path, flops=False)
    assert r.names == ["0"]
    assert (r.sites[0].calls, r.sites[0].call_shapes) == (2, ((16, 16), (8, 8)))
    assert r.sites[0].macs == _macs(4, 4, 16, 16) + _macs(4, 4, 8, 8)


class WeightTouching(nn.Module):
    """Touches a weight's .data in forward: torch.export refuses, fx copes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.conv.weight.data.mul_(1.0)
        return self.conv(x)


class DataDependent(nn.Module):
    """Branches on a value: export, fx and fake tensors all fail; real zeros work."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.mean() > 0:
            x = x * 2
        return self.conv(x)


def test_auto_falls_back_to_fx(monkeypatch):
    import cubesearch.plan.sites.tracing as tracing

    def refuse(*args, **kwargs):  # torch.export refused `.data` with a real input; with the fake
        raise RuntimeError("export refused")  # input it now copes, so make it refuse here

    monkeypatch.setattr(tracing, "trace_export", refuse)
    r = find_sites(WeightTouching(), (3, 16, 16), flops=False)
    assert r.trace_path == "fx"
    assert r.trace_notes[0].startswith("export failed: ")
    assert r.names == ["conv"] and r.sites[0].macs == _macs(3, 8, 16, 16)


def test_auto_falls_back_to_hooks_on_real_tensors():
    r = find_sites(DataDependent(), (3, 16, 16), flops=False)
    assert r.trace_path == "hooks"
    assert [n.split(" failed")[0] for n in r.trace_notes[:3]] == [
        "export", "fx", "hooks (fake tensors)"]
    assert r.trace_notes[-1] == "shapes from real zero tensors"
    assert r.names == ["conv"] and r.sites[0].macs == _macs(3, 8, 16, 16)


def test_forced_path_that_fails_says_so():
    with pytest.raises(CubesearchError, match=r"tracing with 'export' failed"):
        find_sites(DataDependent(), (3, 16, 16), trace="export", flops=False)
    with pytest.raises(CubesearchError, match=r"unknown trace path 'jit'"):
        find_sites(DataDependent(), (3, 16, 16), trace="jit", flops=False)


def test_auto_falls_back_in_order(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("export is down")

    monkeypatch.setattr(tracing, "trace_export", broken)
    r = find_sites(Hand(), (3, 64, 64), flops=False)
    assert r.trace_path == "fx"
    assert r.trace_notes == ["export failed: RuntimeError: export is down"]
    monkeypatch.setattr(tracing, "trace_fx", broken)
    r = find_sites(Hand(), (3, 64, 64), flops=False)
    assert r.trace_path == "hooks"
    assert r.trace_notes[-1] == "shapes from fake tensors"
    assert r.names == ["backbone.0", "neck", "head.0"]


class Leafy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + x


def test_fx_sees_convs_inside_leaf_modules(monkeypatch):
    monkeypatch.setattr(fx_trace, "_timm_leaves", lambda: ((Leafy,), ()))
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), Leafy(), nn.MaxPool2d(2), Leafy())
    r = find_sites(model, (3, 32, 32), trace="fx", flops=False)
    assert r.names == ["0", "1.conv", "3.conv"]
    assert [s.input_hw for s in r.sites] == [(32, 32), (32, 32), (16, 16)]


def test_timm_model_through_every_path():
    model = load_model("timm:resnet18")
    reports = [find_sites(model, (3, 64, 64), trace=p, flops=False, strided=True)
               for p in ("export", "fx", "hooks")]
    dicts = [[s.to_dict() for s in r.sites] for r in reports]
    assert dicts[0] == dicts[1] == dicts[2]
    r = reports[0]
    # resnet18: 16 3×3 convs in layer1-4, three of them strided (the first of layers 2-4)
    assert len(r) == 16
    assert sorted(s.name for s in r.sites if s.stride == 2) == [
        "layer2.0.conv1", "layer3.0.conv1", "layer4.0.conv1"]
    assert r.site("layer1.0.conv1").input_hw == (16, 16)
    assert r.site("layer4.1.conv2").input_hw == (2, 2)
    assert all(s.role == "encoder" for s in r.sites)


# --- roles and selection -----------------------------------------------------------------------


@pytest.mark.parametrize(("name", "role"), [
    ("encoder.layer1.0.conv1", "encoder"),
    ("backbone.stages.2.conv", "encoder"),
    ("decoder.blocks.0.conv1.0", "decoder"),
    ("decode_head.fuse.conv", "decoder"),
    ("neck.lateral.0", "decoder"),
    ("up3.conv", "decoder"),
    ("down2.conv", "encoder"),
    ("segmentation_head.0", "decoder"),
    ("layer3.1.conv2", "encoder"),
    ("conv1", "encoder"),  # no known word: backbone, right for classifiers
])
def test_role_heuristics(name, role):
    assert role_of(name) == role


def test_smp_role_is_the_encoder_prefix():
    assert role_of("encoder.layer1.0.conv1", smp=True) == "encoder"
    assert role_of("decoder.up.conv", smp=True) == "decoder"
    assert role_of("segmentation_head.0", smp=True) == "decoder"
    assert role_of("encoderish.conv", smp=True) == "decoder"
    r = find_sites(load_model("smp:FPN:resnet18"), (3, 64, 64), flops=False)
    assert r.smp
    for s in r.sites:
        assert s.role == ("encoder" if s.name.startswith("encoder.") else "decoder")
    assert len(r.by_role("encoder")) == 13 and len(r.by_role("decoder")) == 7


def test_include_and_exclude_override_roles(hand_report):
    sites = hand_report.sites
    names = lambda chosen: [s.name for s in chosen]  # noqa: E731
    assert names(select_sites(sites, "decoder")) == ["neck", "head.0"]
    assert names(select_sites(sites, "encoder")) == ["backbone.0"]
    assert names(select_sites(sites, "fullcube")) == ["backbone.0", "neck", "head.0"]
    assert names(select_sites(sites, "none")) == []
    # --include picks by name whatever the role; --exclude then drops
    assert names(select_sites(sites, "decoder", include=[r"^backbone"])) == ["backbone.0"]
    assert names(select_sites(sites, "none", include=["neck", "head"])) == ["neck", "head.0"]
    assert names(select_sites(sites, "fullcube", exclude=[r"^neck$"])) == ["backbone.0", "head.0"]
    assert names(select_sites(sites, "decoder", exclude=["head"])) == ["neck"]
    with pytest.raises(CubesearchError, match=r"--include '\(' is not a valid regular expression"):
        select_sites(sites, include=["("])
    with pytest.raises(CubesearchError, match=r"unknown preset 'most'"):
        select_sites(sites, "most")


# --- eligibility rules and sizes ---------------------------------------------------------------


@pytest.mark.parametrize(("conv", "depthwise", "strided", "reason"), [
    (nn.Conv2d(8, 8, 3, padding=1), False, False, None),
    (nn.Conv2d(8, 8, 3, padding="same"), False, False, None),
    (nn.Conv2d(8, 8, 5, padding=2), False, False, "5×5 kernel"),
    (nn.Conv2d(8, 8, (3, 1), padding=(1, 0)), False, False, "3×1 kernel"),
    (nn.Conv2d(8, 8, 3, padding=1, groups=8), False, False, "depthwise (use --depthwise)"),
    (nn.Conv2d(8, 8, 3, padding=1, groups=8), True, False, None),
    (nn.Conv2d(8, 16, 3, padding=1, groups=8), True, False, None),  # depth multiplier 2
    (nn.Conv2d(8, 16, 3, padding=1, groups=4), True, False, "grouped conv (groups=4)"),
    (nn.Conv2d(8, 8, 3, stride=2, padding=1), False, False, "stride 2 (use --strided)"),
    (nn.Conv2d(8, 8, 3, stride=2, padding=1), False, True, None),
    (nn.Conv2d(8, 8, 3, stride=(2, 1), padding=1), False, True, "non-square stride (2, 1)"),
    (nn.Conv2d(8, 8, 3, padding=2, dilation=2), False, False, "dilation 2"),
    (nn.Conv1d(8, 8, 3, padding=1), False, False, "not an nn.Conv2d (Conv1d)"),
])
def test_conv_eligibility(conv, depthwise, strided, reason):
    assert conv_eligibility(conv, depthwise=depthwise, strided=strided) == reason


@pytest.mark.parametrize(("text", "size"), [
    ("3x512x512", (3, 512, 512)), ("3×64×32", (3, 64, 32)), ("1,32,48", (1, 32, 48)),
    ("256", (3, 256, 256)), ((4, 16, 16), (4, 16, 16)),
])
def test_parse_input_size(text, size):
    assert parse_input_size(text) == size


@pytest.mark.parametrize("bad", ["3xAx5", "0x64x64", "1x2x3x4", ""])
def test_parse_input_size_errors(bad):
    with pytest.raises(CubesearchError, match="input size"):
        parse_input_size(bad)


def test_report_json_round_trip(hand_report):
    import json

    d = json.loads(json.dumps(hand_report.to_dict()))
    assert d["n_sites"] == 3 and (d["n_encoder"], d["n_decoder"]) == (1, 2)
    assert d["sites"][1]["call_shapes"] == [[30, 30], [15, 15]]
    assert d["base_flops"] == hand_report.base_flops
    assert d["trace_path"] == "export" and d["uncalled"] == ["unused"]

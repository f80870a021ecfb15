"""The Cube Kernel block against docs/design.md §1: shapes, counts, index maps, folds, exports."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
import torch.nn.functional as F

from cubesearch import CubeBlock, CubeConfig
from cubesearch.blocks import (
    ChannelRouter,
    FoldedCubeBlock,
    LatticeConv,
    SpatialAttention,
    block_cost,
    fold_blocks,
    inverse_reconstruct,
    lattice_order,
    reconstruct,
)
from cubesearch.blocks.cost import conv_cost
from cubesearch.cost.pricing import fvcore_flops


def randomize_norms(module: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, so folds are really tested."""
    g = torch.Generator().manual_seed(1)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g))
            m.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.3)
            m.weight.data.copy_(torch.randn(n, generator=g))
            m.bias.data.copy_(torch.randn(n, generator=g))
    return module


# --- CubeConfig -----------------------------------------------------------------------------


def test_config_defaults_are_the_papers_block():
    c = CubeConfig()
    assert (c.lattice_stride, c.groups, c.router, c.attention, c.depth, c.fusion_kernel, c.act) == (
        2, 4, "pre", True, 1, 3, "gelu")


@pytest.mark.parametrize(
    "knob, value, allowed",
    [("lattice_stride", 3, "1 or 2"), ("router", "mid", "'pre', 'post' or 'none'"),
     ("fusion_kernel", 5, "1 or 3"), ("act", "silu", "'gelu' or 'relu'"),
     ("depth", 0, "greater than or equal to 1"), ("groups", 0, "greater than or equal to 1"),
     ("attention", "yes", "valid boolean")],
)
def test_config_rejects_bad_values_naming_knob_and_allowed(knob, value, allowed):
    with pytest.raises(ValueError) as err:
        CubeConfig(**{knob: value})
    msg = str(err.value)
    assert f"CubeConfig.{knob}" in msg and allowed in msg and repr(value) in msg
    assert "\n" not in msg


def test_config_unknown_knob_lists_known_ones():
    with pytest.raises(ValueError, match=r"CubeConfig.kernel: unknown knob \(known: lattice_stride"):
        CubeConfig(kernel=3)


def test_config_is_frozen_hashable_and_round_trips():
    c = CubeConfig(lattice_stride=1, groups=2, router="post", attention=False, depth=3,
                   fusion_kernel=1, act="relu")
    with pytest.raises(Exception, match="frozen"):
        c.depth = 2  # type: ignore[misc]
    assert CubeConfig.from_dict(c.to_dict()) == c
    assert CubeConfig.from_json(c.to_json()) == c
    assert json.loads(c.to_json())["router"] == "post"
    assert len({c, CubeConfig.from_dict(c.to_dict())}) == 1


# --- shapes ---------------------------------------------------------------------------------

ALL_KNOBS = list(itertools.product((1, 2), ("pre", "post", "none"), (True, False), (1, 2), (1, 3),
                                   ("gelu", "relu")))


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("lattice_stride, router, attention, depth, k, act", ALL_KNOBS)
def test_output_shape_matches_replaced_conv(lattice_stride, router, attention, depth, k, act,
                                            stride):
    cfg = CubeConfig(lattice_stride=lattice_stride, router=router, attention=attention,
                     depth=depth, fusion_kernel=k, act=act, groups=4)
    c_in = 24 if router == "none" else 10  # 10: not a multiple of 4, padded by the router
    block = CubeBlock(c_in, 12, cfg, stride=stride)
    conv = torch.nn.Conv2d(c_in, 12, 3, stride=stride, padding=1)
    x = torch.randn(2, c_in, 9, 14)  # odd height: valid for every knob
    y = block(x)
    assert y.shape == conv(x).shape
    y.mean().backward()
    assert all(p.grad is not None for p in block.parameters())


def test_router_none_rejects_channels_not_multiple_of_four():
    with pytest.raises(ValueError, match=r"router='none' needs in_channels divisible by 4 \(got 30\)"):
        CubeBlock(30, 32, CubeConfig(router="none"))


def test_wrong_input_channels_is_a_clear_error():
    with pytest.raises(ValueError, match=r"CubeBlock expects \(B, 16, H, W\), got \(1, 8, 5, 5\)"):
        CubeBlock(16, 16)(torch.randn(1, 8, 5, 5))


def test_inverse_reconstruct_rejects_odd_lattice():
    with pytest.raises(ValueError, match="even height and width"):
        inverse_reconstruct(torch.randn(1, 3, 5, 4))


def test_fusion_groups_fall_back_to_gcd():
    block = CubeBlock(24, 10, CubeConfig(groups=4))  # q = 6, out 10: gcd(4, 6, 10) = 2
    assert block.units[0].fusion.groups == 2
    assert block.units[0].fusion.weight.shape == (10, 3, 3, 3)


# --- counts ---------------------------------------------------------------------------------


def params_formula(c_in: int, c_out: int, g: int, k: int) -> int:
    """docs/design.md §1, lattice_stride=2, router=pre."""
    c = 4 * math.ceil(c_in / 4)
    q = c // 4
    return c_in * c + 2 * c + 9 * q + 2 * q + c_out * (q // g) * k * k + c_out + 99


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_parameter_count_matches_design_figure():
    assert n_params(CubeBlock(96, 96)) == 15_051 == params_formula(96, 96, 4, 3)
    assert n_params(torch.nn.Conv2d(96, 96, 3)) == 83_040


@pytest.mark.parametrize("c_in, c_out, g, k", [(96, 96, 4, 3), (30, 64, 2, 1), (64, 32, 8, 3)])
def test_parameter_formula_general(c_in, c_out, g, k):
    block = CubeBlock(c_in, c_out, CubeConfig(groups=g, fusion_kernel=k))
    assert n_params(block) == params_formula(c_in, c_out, g, k) == block_cost(
        c_in, c_out, CubeConfig(groups=g, fusion_kernel=k)).params


@pytest.mark.parametrize("cfg", [CubeConfig(), CubeConfig(lattice_stride=1), CubeConfig(
    router="post", attention=False, depth=2, fusion_kernel=1, groups=2), CubeConfig(router="none")])
def test_block_cost_params_equal_module_params(cfg):
    block = CubeBlock(32, 48, cfg, stride=2)
    assert block_cost(32, 48, cfg, stride=2).params == n_params(block)


def test_fvcore_equals_formula_conv_terms_plus_norms():
    """At 1×96×128×128 the conv terms are 0.241 GMACs; fvcore adds BatchNorm (5·numel, train)."""
    hw, c, q = 128 * 128, 96, 24
    conv_terms = hw * (96 * c + 9 * q + 96 * (q // 4) * 9 + 98)
    assert conv_terms == 241_074_176
    x = torch.randn(1, 96, 128, 128)
    reference = CubeBlock(96, 96).set_impl("reference").train()
    assert fvcore_flops(reference, (x,)) == conv_terms + 5 * (c + q) * hw  # 0.2509 G
    # The folded lattice conv runs a 2×2 kernel with 7 zero taps per channel on an (H+1)×(W+1)
    # output: fvcore counts what runs, and block_cost predicts it exactly.
    fast = CubeBlock(96, 96).train()
    zero_taps = 16 * q * 129 * 129 - 9 * q * hw
    assert fvcore_flops(fast, (x,)) == conv_terms + 5 * (c + q) * hw + zero_taps
    assert fvcore_flops(fast, (x,)) == block_cost(96, 96, height=128).flops
    assert conv_cost(96, 96, height=128).flops == 1_358_954_496


@pytest.mark.parametrize("cfg, stride, training", [
    (CubeConfig(), 1, False), (CubeConfig(lattice_stride=1), 2, True),
    (CubeConfig(router="post", depth=3, fusion_kernel=1), 2, False),
    (CubeConfig(router="none", attention=False, groups=3), 1, True)])
def test_block_cost_flops_equal_fvcore(cfg, stride, training):
    block = CubeBlock(36, 20, cfg, stride=stride).train(training)
    x = torch.randn(2, 36, 17, 12)
    assert fvcore_flops(block, (x,)) == block_cost(36, 20, cfg, stride, 17, 12, batch=2,
                                                   training=training).flops


# --- reconstruction -------------------------------------------------------------------------


def test_reconstruct_is_the_exact_index_map():
    b, c, h, w = 2, 12, 3, 5
    q = c // 4
    x = torch.arange(b * c * h * w, dtype=torch.float32).view(b, c, h, w)
    lat = reconstruct(x)
    assert lat.shape == (b, q, 2 * h, 2 * w)
    for bi, k, hh, ww, dy, dx in [(0, 0, 0, 0, 0, 0), (1, 2, 2, 4, 1, 1), (0, 1, 1, 3, 0, 1),
                                  (1, 0, 2, 0, 1, 0)]:
        assert lat[bi, k, 2 * hh + dy, 2 * ww + dx] == x[bi, (2 * dy + dx) * q + k, hh, ww]
    # every element once: it is a permutation
    assert torch.equal(lat.flatten().sort().values, x.flatten().sort().values)


def test_inverse_reconstruct_undoes_reconstruct():
    x = torch.randn(3, 16, 7, 9)
    assert torch.equal(inverse_reconstruct(reconstruct(x)), x)
    lat = torch.randn(2, 5, 6, 8)
    assert torch.equal(reconstruct(inverse_reconstruct(lat)), lat)


def test_lattice_order_makes_reconstruct_a_pixel_shuffle():
    x = torch.randn(2, 20, 4, 6)
    assert torch.equal(F.pixel_shuffle(x[:, lattice_order(20)], 2), reconstruct(x))


# --- pieces ---------------------------------------------------------------------------------


def test_router_is_zero_padded_identity_at_init():
    router = ChannelRouter(10, 12, lattice=True)
    x = torch.randn(2, 10, 5, 5)
    padded = F.pad(x, (0, 0, 0, 0, 0, 2))
    assert torch.equal(router.conv(x), padded[:, lattice_order(12)])
    plain = ChannelRouter(8, 8)
    assert torch.equal(plain.conv.weight.view(8, 8), torch.eye(8))


def test_spatial_attention_pools_mean_and_max():
    att = SpatialAttention()
    x = torch.randn(2, 6, 8, 8)
    pooled = SpatialAttention.pool(x)
    assert torch.allclose(pooled[:, 0], x.mean(1)) and torch.equal(pooled[:, 1], x.amax(1))
    a = att(x)
    assert a.shape == (2, 1, 8, 8) and bool(((a > 0) & (a < 1)).all())
    assert torch.allclose(a, torch.sigmoid(att.conv(pooled)))


@pytest.mark.parametrize("stride", [1, 2])
def test_lattice_conv_fold_matches_definition_in_training(stride):
    """The grouped-conv form gives the definition's values *and* gradients (docs/design.md §4)."""
    fast = LatticeConv(16, stride)
    ref = LatticeConv(16, stride, impl="reference")
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(2, 16, 7, 6)
    x_ref = x.clone().requires_grad_()
    x = x.requires_grad_()
    y, y_ref = fast(x), ref(x_ref)
    # Reference: ℛ of the canonical tensor, literal depthwise conv, BN, GELU.
    canon = x.detach()[:, torch.argsort(lattice_order(16))]
    literal = F.conv2d(reconstruct(canon), ref.weight, stride=stride, padding=1, groups=4)
    literal = F.gelu(F.batch_norm(literal, None, None, ref.bn.weight, ref.bn.bias, training=True))
    if stride == 1:
        literal = inverse_reconstruct(literal)
    torch.testing.assert_close(y_ref, literal, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(y)
    (y * g).sum().backward()
    (y_ref * g).sum().backward()
    torch.testing.assert_close(fast.weight.grad, ref.weight.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-4, atol=1e-5)


def test_cross_channel_gradient_coupling():
    """The paper's claim: one lattice weight's gradient sees channels of *other* groups.

    With router=none, lattice weight k reads channels k, q+k, 2q+k, 3q+k of X. Changing channel
    q+k (group 1) changes its gradient; changing channel k+1 (same group) does not. For a plain
    depthwise conv on X, channel q+k never reaches weight k.
    """
    q, k = 4, 1
    block = CubeBlock(16, 16, CubeConfig(router="none", attention=False)).train()
    dw = torch.nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False)
    x = torch.randn(2, 16, 6, 6)

    def grads(inp):
        block.zero_grad()
        dw.zero_grad()
        block(inp).square().sum().backward()
        dw(inp).square().sum().backward()
        return block.units[0].lattice.weight.grad[k].clone(), dw.weight.grad[k].clone()

    base_cube, base_dw = grads(x)
    other_group = x.clone()
    other_group[:, q + k] += torch.randn(2, 6, 6)
    cube, plain = grads(other_group)
    assert (cube - base_cube).abs().max() > 1e-3
    assert torch.equal(plain, base_dw)
    same_group = x.clone()
    same_group[:, k + 1] += torch.randn(2, 6, 6)
    cube, _ = grads(same_group)
    torch.testing.assert_close(cube, base_cube)


# --- folds ----------------------------------------------------------------------------------


@pytest.mark.parametrize("cfg", [
    CubeConfig(), CubeConfig(lattice_stride=1), CubeConfig(router="post", act="relu"),
    CubeConfig(router="none", attention=False, fusion_kernel=1), CubeConfig(depth=3, groups=2),
    CubeConfig(lattice_stride=1, router="none", depth=2),
    CubeConfig(lattice_stride=1, groups=1, fusion_kernel=1)])  # permutation folded into fusion
@pytest.mark.parametrize("stride", [1, 2])
def test_fold_matches_block_in_eval(cfg, stride):
    block = randomize_norms(CubeBlock(32, 24, cfg, stride=stride))
    for p in block.parameters():  # random weights everywhere, router included
        p.data.normal_(0, 0.3)
    block.eval()
    folded = block.fold()
    assert not folded.training
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(2, 32, 11, 14)
    with torch.no_grad():
        err = (folded(x) - block(x)).abs().max().item()
    assert err <= 1e-5
    assert block.training is False  # fold() does not change the block


@pytest.mark.parametrize("c_in,c_out,cfg", [
    (30, 16, CubeConfig(router="post")),  # was "INDICES element is out of DATA bounds"
    (30, 16, CubeConfig(router="post", lattice_stride=1)),
    (30, 18, CubeConfig(router="post", depth=2)),  # the second unit's input: 18, padded to 20
    (30, 16, CubeConfig(router="pre")),
    (7, 10, CubeConfig(router="post", groups=1)),
    (32, 18, CubeConfig(router="none"))])  # 'none' is allowed only where C_in % 4 == 0
@pytest.mark.parametrize("stride", [1, 2])
def test_fold_pads_inputs_that_are_not_a_multiple_of_4(c_in, c_out, cfg, stride):
    block = randomize_norms(CubeBlock(c_in, c_out, cfg, stride=stride))
    for p in block.parameters():
        p.data.normal_(0, 0.3)
    block.eval()
    x = torch.randn(2, c_in, 8, 9)
    with torch.no_grad():
        torch.testing.assert_close(block.fold()(x), block(x), rtol=1e-5, atol=1e-5)


def test_fold_blocks_folds_every_block_once_and_leaves_the_model_alone():
    block = randomize_norms(CubeBlock(8, 8, CubeConfig(lattice_stride=1))).eval()
    model = torch.nn.Sequential(block, torch.nn.ReLU(), block)  # one block under two names
    deployed = fold_blocks(model)
    assert isinstance(deployed[0], FoldedCubeBlock) and deployed[0] is deployed[2]
    assert model[0] is block and model[2] is block  # the original is not changed
    x = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(deployed(x), model(x), rtol=1e-5, atol=1e-5)
    assert isinstance(fold_blocks(block), FoldedCubeBlock)


@pytest.mark.parametrize("path", ["onnx", "compile"])
def test_fold_runtime_forms_are_exact(path, monkeypatch):
    """The lattice conv's ONNX and torch.compile forms give the eager form's outputs."""
    block = randomize_norms(CubeBlock(12, 8, stride=2)).eval()
    folded = block.fold()
    x = torch.randn(2, 12, 9, 10)
    with torch.no_grad():
        eager = folded(x)
        flag = torch.onnx if path == "onnx" else torch.compiler
        monkeypatch.setattr(flag, "is_in_onnx_export" if path == "onnx" else "is_compiling",
                            lambda: True)
        torch.testing.assert_close(folded(x), eager, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(folded(x), block(x), rtol=1e-5, atol=1e-5)


def test_fold_does_not_alias_block_weights():
    block = CubeBlock(16, 16).eval()
    folded = block.fold()
    before = folded(torch.ones(1, 16, 4, 4))
    with torch.no_grad():
        block.units[0].fusion.weight.add_(1.0)
    assert torch.equal(folded(torch.ones(1, 16, 4, 4)), before)


# --- compile / trace / export ---------------------------------------------------------------


def test_jit_trace_matches_eager():
    block = randomize_norms(CubeBlock(20, 24, stride=2)).eval()
    x = torch.randn(2, 20, 10, 12)
    traced = torch.jit.trace(block, x)
    torch.testing.assert_close(traced(x), block(x))
    traced_fold = torch.jit.trace(block.fold(), x)
    torch.testing.assert_close(traced_fold(x), block(x), rtol=1e-5, atol=1e-5)


def test_onnx_export_matches_onnxruntime(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    block = randomize_norms(CubeBlock(20, 24, CubeConfig(lattice_stride=1), stride=2)).eval()
    block2 = randomize_norms(CubeBlock(20, 24)).eval()
    x = torch.randn(2, 20, 10, 12)
    for i, module in enumerate((block, block.fold(), block2, block2.fold())):
        path = tmp_path / f"m{i}.onnx"
        torch.onnx.export(module, (x,), str(path), dynamo=True, verbose=False)
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (out,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
        assert (torch.from_numpy(out) - module(x)).abs().max().item() <= 1e-4


def test_onnx_export_of_a_folded_block_whose_input_is_not_a_multiple_of_4(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    folded = randomize_norms(CubeBlock(30, 16, CubeConfig(router="post"))).eval().fold()
    x = torch.randn(2, 30, 8, 8)
    path = tmp_path / "m.onnx"
    torch.onnx.export(folded, (x,), str(path), dynamo=True, verbose=False)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    assert (torch.from_numpy(out) - folded(x)).abs().max().item() <= 1e-4


def test_torch_compile_forward_and_backward():
    block = CubeBlock(12, 16, stride=2)
    compiled = torch.compile(block)
    x = torch.randn(2, 12, 8, 8)
    y = compiled(x)
    torch.testing.assert_close(y, block(x), rtol=1e-4, atol=1e-5)
    y.sum().backward()
    assert block.units[0].lattice.weight.grad is not None

"""convert(): the input is not mutated, the output shape is kept, backward works; every smp
architecture × a small encoder with the fullcube and decoder presets; timm CNN and hybrid models;
torch.compile and ONNX; plan JSON validation; insertion points."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from cubesearch.blocks import CubeBlock, CubeConfig
from cubesearch.core.errors import CubesearchError
from cubesearch.models.load import load_model
from cubesearch.plan.conversion import CubeInsertion, convert, cube_blocks
from cubesearch.plan.plan import PLAN_VERSION, Plan, make_plan, parse_insertion
from cubesearch.plan.sites import find_sites

ROOT = Path(__file__).resolve().parents[1]
UNET = str(ROOT / "examples" / "unet.py")
TINY = str(ROOT / "tests" / "assets" / "tiny_seg.py")

# Every smp 0.6 architecture with a small encoder, at the smallest input it accepts quickly.
# PAN pools the deepest feature map to 1×1 and then max-pools it again: it needs ≥ 128 px.
# DPT's ViT encoder fixes its image size unless built with dynamic_img_size.
SMP_CASES = [
    ("Unet", "resnet18", 64, {}),
    ("UnetPlusPlus", "resnet18", 64, {}),
    ("MAnet", "resnet18", 64, {}),
    ("Linknet", "resnet18", 64, {}),
    ("FPN", "resnet18", 64, {}),
    ("PSPNet", "resnet18", 64, {}),
    ("DeepLabV3", "resnet18", 64, {}),
    ("DeepLabV3Plus", "resnet18", 64, {}),
    ("PAN", "resnet18", 128, {}),
    ("UPerNet", "resnet18", 64, {}),
    ("Segformer", "mit_b0", 64, {}),
    ("DPT", "tu-vit_tiny_patch16_224", 64, {"dynamic_img_size": True}),
]


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _train_step(model: nn.Module, size: tuple[int, int, int]) -> torch.Tensor:
    model.train()
    x = torch.randn(2, *size)
    y = model(x)
    y.float().mean().backward()
    return y


# --- the basics on a small model ---------------------------------------------------------------


def test_convert_does_not_mutate_the_input():
    model = load_model(TINY)
    types = {n: type(m) for n, m in model.named_modules()}
    state = _state(model)
    report = find_sites(model, (3, 32, 32))
    plan, _ = make_plan(report, TINY, preset="fullcube", insertions=["encoder.3"])
    new = convert(model, plan)
    assert {n: type(m) for n, m in model.named_modules()} == types
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert len(cube_blocks(model)) == 0
    assert len(cube_blocks(new)) == 6  # 5 sites + 1 insertion
    assert not any(p1 is p2 for p1 in model.parameters() for p2 in new.parameters())


def test_converted_blocks_match_the_convs_they_replace():
    model = load_model(UNET, width=4)
    report = find_sites(model, (3, 64, 64), flops=False)
    cfg = CubeConfig(groups=2, depth=2, router="post")
    # named by regex: taken even where the block costs more than the conv (a 4-wide net)
    plan, _ = make_plan(report, UNET, config=cfg, include=[r"^decoder\."])
    new = convert(model, plan)
    blocks = cube_blocks(new)
    assert sorted(blocks) == sorted(plan.sites) and len(blocks) == 8
    for name, block in blocks.items():
        conv = model.get_submodule(name)
        assert isinstance(block, CubeBlock)
        assert (block.in_channels, block.out_channels, block.stride) == (
            conv.in_channels, conv.out_channels, 1)
        assert block.config == cfg
    # layers that were not replaced keep their weights
    for key, value in model.state_dict().items():
        if not any(key.startswith(n + ".") for n in plan.sites):
            torch.testing.assert_close(new.state_dict()[key], value)
    # the user's own module classes, not a flattened graph
    assert type(new).__name__ == "UNet" and type(new.decoder[0]).__name__ == "Up"


def test_output_shape_and_backward():
    model = load_model(UNET, width=4, num_classes=3)
    report = find_sites(model, (3, 64, 64), flops=False)
    plan, _ = make_plan(report, UNET, preset="fullcube")
    new = convert(model, plan)
    y = _train_step(new, (3, 64, 64))
    assert y.shape == (2, 3, 64, 64)
    for name, block in cube_blocks(new).items():
        grads = [p.grad for p in block.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), name
    assert sum(g.abs().sum() for g in (p.grad for p in new.parameters()) if g is not None) > 0


def test_strided_and_depthwise_sites_keep_shapes():
    model = load_model("timm:resnet10t", num_classes=4)
    report = find_sites(model, (3, 64, 64), strided=True, depthwise=True, flops=False)
    strided = [s.name for s in report.sites if s.stride == 2]
    assert strided  # resnet10t has strided 3×3 convs (stem and stage starts)
    plan, _ = make_plan(report, "timm:resnet10t", include=[".*"])
    new = convert(model, plan)
    for name in strided:
        assert new.get_submodule(name).stride == 2
    assert _train_step(new, (3, 64, 64)).shape == (2, 4)


def test_convert_keeps_device_dtype_and_mode():
    model = load_model(TINY).double()
    model.eval()
    report = find_sites(model, (3, 32, 32), flops=False)
    plan, _ = make_plan(report, TINY, preset="fullcube")
    new = convert(model, plan)
    for block in cube_blocks(new).values():
        assert all(p.dtype == torch.float64 for p in block.parameters())
        assert not block.training
    assert new(torch.zeros(1, 3, 32, 32, dtype=torch.float64)).dtype == torch.float64


def test_empty_plan_is_a_plain_copy():
    model = load_model(TINY)
    new = convert(model, Plan(model=TINY))
    assert new is not model and len(cube_blocks(new)) == 0
    x = torch.randn(1, 3, 32, 32)
    model.eval(), new.eval()
    torch.testing.assert_close(new(x), model(x))


def test_shared_conv_module_replaced_everywhere():
    conv = nn.Conv2d(4, 4, 3, padding=1)
    model = nn.Sequential(conv, nn.ReLU(), conv)  # registered twice (0 and 2)
    report = find_sites(model, (4, 16, 16), flops=False)
    assert report.names == ["0"] and report.sites[0].calls == 2
    plan, _ = make_plan(report, "x.py", include=[".*"])  # (a preset: 4 → 4 costs less as a conv)
    new = convert(model, plan)
    assert isinstance(new[0], CubeBlock) and new[0] is new[2]
    assert new(torch.randn(2, 4, 16, 16)).shape == (2, 4, 16, 16)


# --- every smp architecture, fullcube and decoder ------------------------------------------------


# A first backward pass through a converted model costs oneDNN ~10-20 s of CPU building kernels
# for its new conv shapes: the default suite trains three architectures, `-m slow` all twelve.
TRAINED = {"Unet", "PSPNet", "Segformer"}


def _smp_params():
    for arch, encoder, hw, kwargs in SMP_CASES:
        yield pytest.param(arch, encoder, hw, kwargs, arch in TRAINED, id=arch)
    for arch, encoder, hw, kwargs in SMP_CASES:
        if arch not in TRAINED:
            yield pytest.param(arch, encoder, hw, kwargs, True, id=f"{arch}-train",
                               marks=pytest.mark.slow)


@pytest.mark.parametrize(("arch", "encoder", "hw", "kwargs", "train"), list(_smp_params()))
def test_every_smp_architecture_converts(arch, encoder, hw, kwargs, train):
    spec = f"smp:{arch}:{encoder}"
    model = load_model(spec, num_classes=2, **kwargs)
    size = (3, hw, hw)
    # SegFormer (mit_b0) has no plain 3×3 conv at all: the paper inserts blocks instead.
    insert = ["after:decoder.fuse_stage"] if arch == "Segformer" else []
    report = find_sites(model, size, flops=False)
    assert report.trace_path == "export" and (len(report) > 0) != bool(insert)
    assert report.output_shape == (1, 2, hw, hw)
    counts = {}
    for preset in ("fullcube", "decoder"):
        plan, _ = make_plan(report, spec, preset=preset, insertions=insert)
        expected = [s.name for s in report.sites  # presets keep convs a block costs more than
                    if (preset == "fullcube" or not s.name.startswith("encoder."))
                    and s.block_ratio() <= 1]
        assert sorted(plan.sites) == sorted(expected)
        new = convert(model, plan)
        assert len(cube_blocks(new)) == len(plan.sites) + len(insert)
        counts[preset] = len(plan.sites)
        if preset == "decoder" or not train:  # an eval forward checks the shape
            with torch.no_grad():
                assert new.eval()(torch.zeros(1, *size)).shape == (1, 2, hw, hw)
            continue
        y = _train_step(new, size)
        assert y.shape == (2, 2, hw, hw)
        for block in cube_blocks(new).values():
            assert all(p.grad is not None for p in block.parameters())
    assert counts["fullcube"] >= counts["decoder"]


# --- timm CNN and hybrid models ----------------------------------------------------------------


@pytest.mark.parametrize(("spec", "kwargs", "min_sites"), [
    ("timm:resnet18", {}, 16),  # CNN (16 with --strided)
    ("timm:mobilevit_xxs", {}, 6),  # hybrid: MobileNet blocks + transformer
    ("timm:coatnet_nano_rw_224", {"img_size": 64}, 1),  # hybrid: MBConv stages + attention
])
def test_timm_models_convert(spec, kwargs, min_sites):
    model = load_model(spec, num_classes=5, **kwargs)
    report = find_sites(model, (3, 64, 64), strided=True, flops=False)
    assert len(report) >= min_sites
    plan, _ = make_plan(report, spec, preset="fullcube")
    assert sorted(plan.sites) == sorted(s.name for s in report if s.block_ratio() <= 1)
    new = convert(model, plan)
    assert len(cube_blocks(new)) == len(plan.sites) > 0
    assert _train_step(new, (3, 64, 64)).shape == (2, 5)


# --- torch.compile and ONNX --------------------------------------------------------------------


def _tiny_converted() -> tuple[nn.Module, Plan]:
    model = load_model(TINY)
    report = find_sites(model, (3, 32, 32), flops=False)
    plan, _ = make_plan(report, TINY, preset="fullcube", insertions=["after:encoder.3"])
    return convert(model, plan), plan


@pytest.mark.parametrize("backend", [
    "aot_eager",  # dynamo + AOT autograd graphs, no C++ codegen: seconds
    pytest.param("inductor", marks=pytest.mark.slow),  # the default backend: minutes on 2 cores
])
def test_torch_compile_of_a_converted_model(backend):
    torch._dynamo.reset()
    new, _ = _tiny_converted()
    new.train()
    x = torch.randn(2, 3, 32, 32)
    compiled = torch.compile(new, backend=backend, fullgraph=True)
    y = compiled(x)
    new.eval()
    torch.testing.assert_close(compiled(x), new(x), rtol=1e-4, atol=1e-5)
    new.train()
    y.sum().backward()
    assert all(p.grad is not None for p in cube_blocks(new)["decoder.0.0"].parameters())


def test_onnx_export_of_a_converted_model(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    new, _ = _tiny_converted()
    new.eval()
    x = torch.randn(1, 3, 32, 32)
    path = tmp_path / "m.onnx"
    torch.onnx.export(new, (x,), str(path), dynamo=True, verbose=False)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        ref = new(x)
    assert out.shape == tuple(ref.shape)
    assert (torch.from_numpy(out) - ref).abs().max().item() <= 1e-4


def test_tracing_a_converted_model_leaves_blocks_working():
    """Fake-tensor runs (find_sites, shape checks) of a converted model must not leave fake
    tensors in process-wide caches: real forwards and fvcore counts work afterwards."""
    from cubesearch.blocks import layers
    from cubesearch.cost.pricing import reference_flops

    for fn in (layers._stride2_fold_index, layers._stride1_fold_index):
        fn.cache_clear()  # the worst case: the first block forward ever is a fake one
    new, _ = _tiny_converted()
    for path in ("export", "fx", "hooks"):
        r = find_sites(new, (3, 32, 32), trace=path, flops=False, strided=True, depthwise=True)
        assert r.output_shape == (1, 1, 32, 32)
    new.eval()
    with torch.no_grad():
        assert torch.isfinite(new(torch.randn(1, 3, 32, 32))).all()
    assert reference_flops(new, (3, 32, 32)) > 0


# --- insertions --------------------------------------------------------------------------------


def test_insertion_after_a_module():
    model = load_model(TINY)
    plan = Plan(model=TINY, input_size=(3, 32, 32),
                insertions={parse_insertion("after:decoder.0"): CubeConfig()})
    new = convert(model, plan)
    wrapped = new.decoder[0]
    assert isinstance(wrapped, CubeInsertion)
    block = wrapped.cube_block
    assert (block.in_channels, block.out_channels) == (16, 16)  # decoder.0 outputs 2·width
    # y = M(x) + block(M(x)): checked against the pieces
    x = torch.randn(1, 16, 16, 16)
    new.eval()
    with torch.no_grad():
        inner = wrapped.module(x)
        torch.testing.assert_close(wrapped(x), inner + block(inner))
    # the wrapped module's state-dict keys are unchanged, so baseline weights load by name
    keys = set(new.state_dict())
    assert set(model.state_dict()) <= keys
    assert all(k.startswith("decoder.0.cube_block.") for k in keys - set(model.state_dict()))
    new.load_state_dict({**new.state_dict(), **model.state_dict()})
    assert _train_step(new, (3, 32, 32)).shape == (2, 1, 32, 32)


def test_insertion_errors():
    model = load_model(TINY)

    def plan(**ins):
        return Plan(model=TINY, input_size=(3, 32, 32), insertions=ins)

    with pytest.raises(CubesearchError, match=r"plan names a module that does not exist: "
                                              r"'decoder.9' \(did you mean decoder.1, decoder.0"):
        convert(model, plan(**{"decoder.9": CubeConfig()}))
    model.spare = nn.Conv2d(1, 1, 1)
    with pytest.raises(CubesearchError, match=r"cannot insert a block after 'spare': the "
                                              r"model's forward never calls it"):
        convert(model, plan(spare=CubeConfig()))
    with pytest.raises(CubesearchError, match=r"'encoder.0.0' is both replaced and an insertion"):
        convert(model, Plan(model=TINY, input_size=(3, 32, 32), sites={"encoder.0.0": CubeConfig()},
                            insertions={"encoder.0.0": CubeConfig()}))
    with pytest.raises(CubesearchError, match=r"expected after:MODULE_NAME"):
        parse_insertion("before:decoder.0")
    with pytest.raises(CubesearchError, match=r"missing module name"):
        parse_insertion("after:")


# --- plan JSON and validation ------------------------------------------------------------------


def test_plan_json_round_trip(tmp_path):
    cfg = CubeConfig(lattice_stride=1, groups=2, router="none", attention=False, depth=2,
                     fusion_kernel=1, act="relu")
    plan = Plan(model=UNET, model_kwargs={"num_classes": 2, "in_channels": 3},
                input_size=(3, 64, 64), sites={"decoder.0.conv.0": cfg},
                insertions={"bottleneck": CubeConfig()})
    path = plan.save(tmp_path / "sub" / "plan.json")
    data = json.loads(path.read_text())
    assert data["version"] == PLAN_VERSION == 1
    assert data["input_size"] == [3, 64, 64]
    assert data["sites"]["decoder.0.conv.0"] == cfg.to_dict()
    back = Plan.load(path)
    assert back == plan and Plan.load(tmp_path / "sub") == plan  # a folder means its plan.json
    assert Plan.from_dict(plan.to_dict()) == plan


def _write(tmp_path: Path, data) -> Path:
    path = tmp_path / "plan.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


GOOD = {"version": 1, "model": "x.py", "input_size": [3, 32, 32],
        "sites": {"encoder.0.0": {"groups": 4}}}


@pytest.mark.parametrize(("change", "message"), [
    ({"version": 2}, r"plan version 2 is not supported \(this cubesearch reads version 1\)"),
    ({"version": None}, r"missing 'version'"),
    ({"sites": {"encoder.0.0": {"groups": 0}}},
     r"sites: 'encoder.0.0': CubeConfig.groups: Input should be greater than or equal to 1"),
    ({"sites": {"encoder.0.0": {"router": "sideways"}}},
     r"'encoder.0.0': CubeConfig.router: Input should be 'pre', 'post' or 'none'"),
    ({"sites": {"encoder.0.0": {"lattice_stride": 3}}}, r"CubeConfig.lattice_stride"),
    ({"sites": {"encoder.0.0": {"colour": "red"}}}, r"CubeConfig.colour: unknown knob"),
    ({"sites": {"encoder.0.0": "fast"}}, r"expected a mapping of knobs, got str"),
    ({"input_size": [3, 0, 32]}, r"input_size must be three positive numbers"),
    ({"extra_key": 1}, r"unknown key 'extra_key'"),
])
def test_plan_validation_errors(tmp_path, change, message):
    data = {**GOOD, **change}
    if change.get("version", 1) is None:
        del data["version"]
    path = _write(tmp_path, data)
    with pytest.raises(CubesearchError, match=rf"^{path}: .*{message}"):
        Plan.load(path)


def test_plan_file_errors(tmp_path):
    with pytest.raises(CubesearchError, match=r"no such plan file: .*nope.json"):
        Plan.load(tmp_path / "nope.json")
    path = _write(tmp_path, "{\n  \"version\": 1,\n  oops\n}")
    with pytest.raises(CubesearchError, match=rf"^{path}:3: not valid JSON"):
        Plan.load(path)
    path = _write(tmp_path, [1, 2])
    with pytest.raises(CubesearchError, match=r"expected a JSON object, got list"):
        Plan.load(path)


def test_plan_check_names_unknown_and_ineligible_sites(tmp_path):
    model = load_model(TINY)
    report = find_sites(model, (3, 32, 32), flops=False)
    Plan(model=TINY, sites={"decoder.0.0": CubeConfig()}).check(report)  # fine
    with pytest.raises(CubesearchError, match=r"plan names sites that do not exist: "
                                              r"'decoder.0.9' is not a conv of .*"
                                              r"\(did you mean decoder.0.0"):
        Plan(model=TINY, sites={"decoder.0.9": CubeConfig()}).check(report)
    with pytest.raises(CubesearchError, match=r"'head' is a conv the block cannot replace: "
                                              r"1×1 kernel"):
        Plan(model=TINY, sites={"head": CubeConfig()}).check(report)
    with pytest.raises(CubesearchError, match=r"router='none' needs C_in divisible by 4 "
                                              r"\(it has 3\)"):
        Plan(model=TINY, sites={"encoder.0.0": CubeConfig(router="none")}).check(report)
    with pytest.raises(CubesearchError, match=r"\(and 1 more\)"):
        Plan(model=TINY, sites={"nope1": CubeConfig(), "nope2": CubeConfig()}).check(report)


def test_router_none_needs_multiples_of_4():
    """Without a router every unit's input must be a multiple of 4: C_in, and C_out when
    depth > 1 (units 2..d map C_out → C_out)."""
    model = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), nn.Conv2d(6, 8, 3, padding=1))
    report = find_sites(model, (4, 8, 8), flops=False)
    deep = CubeConfig(router="none", depth=2)
    plan, notes = make_plan(report, "x.py", include=[".*"], config=deep)
    assert list(plan.sites) == []
    assert notes == ["0: kept, router='none' with depth 2 needs C_out divisible by 4 (it has 6)",
                     "1: kept, router='none' needs C_in divisible by 4 (it has 6)"]
    with pytest.raises(CubesearchError, match=r"site '0': router='none' with depth 2 needs C_out"):
        Plan(model="x.py", sites={"0": deep}).check(report)
    plan, notes = make_plan(report, "x.py", include=[".*"], config=CubeConfig(router="none"))
    assert list(plan.sites) == ["0"]
    assert convert(model, plan)(torch.randn(2, 4, 8, 8)).shape == (2, 8, 8, 8)


def test_convert_rejects_unknown_and_unreplaceable_sites():
    model = load_model(TINY)
    with pytest.raises(CubesearchError, match=r"plan names a site that does not exist: "
                                              r"'decoder.0.7' \(did you mean decoder.0.0"):
        convert(model, Plan(model=TINY, sites={"decoder.0.7": CubeConfig()}))
    with pytest.raises(CubesearchError, match=r"site 'decoder.0.1' cannot take a Cube block: "
                                              r"not an nn.Conv2d \(BatchNorm2d\)"):
        convert(model, Plan(model=TINY, sites={"decoder.0.1": CubeConfig()}))
    with pytest.raises(CubesearchError, match=r"site 'head' cannot take a Cube block: 1×1 kernel"):
        convert(model, Plan(model=TINY, sites={"head": CubeConfig()}))
    with pytest.raises(CubesearchError, match=r"convert\(\) needs a Plan, got dict"):
        convert(model, {"sites": {}})


def test_make_plan_router_none_skips_sites_it_cannot_apply_to():
    model = load_model(TINY)
    report = find_sites(model, (3, 32, 32), flops=False)
    plan, notes = make_plan(report, TINY, preset="fullcube", config=CubeConfig(router="none"))
    assert "encoder.0.0" not in plan.sites and len(plan.sites) == 4
    assert notes == ["encoder.0.0: kept, router='none' needs C_in divisible by 4 (it has 3)"]
    assert _train_step(convert(model, plan), (3, 32, 32)).shape == (2, 1, 32, 32)


def test_presets_keep_the_conv_where_a_block_costs_more():
    """A prediction conv with one output channel: the block's router alone (16·16 MACs per pixel)
    outweighs the conv (16·9); presets keep it and say why, `--include` still takes it."""
    from cubesearch.blocks import block_cost

    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1),
                          nn.ReLU(), nn.Conv2d(16, 1, 3, padding=1))
    report = find_sites(model, (3, 16, 16))
    head = report.site("4")
    ratio = block_cost(16, 1, CubeConfig(), 1, 16, 16, training=False).flops / (16 * 1 * 9 * 16 * 16)
    assert head.block_ratio() == pytest.approx(ratio) and ratio > 1
    assert report.site("2").block_ratio() < 1
    plan, notes = make_plan(report, "x.py", preset="fullcube")
    assert "4" not in plan.sites and "2" in plan.sites
    assert f"4: kept, a block costs {ratio:.2f}× the conv's FLOPs" in notes
    assert "4" in make_plan(report, "x.py", include=["4"])[0].sites

"""`cubesearch sites` and `cubesearch convert`: tables, --json, -o OUT (plan.json +
model.safetensors that `cubesearch.load` rebuilds), and every bad input of issue 4: one
`error: …` line on stderr, exit 1, no traceback, nothing written to -o."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import cubesearch
from cubesearch.blocks import CubeConfig
from cubesearch.cli import main
from cubesearch.models.load import load_model
from cubesearch.plan.conversion import convert, cube_blocks
from cubesearch.plan.plan import Plan
from cubesearch.plan.sites import find_sites

ROOT = Path(__file__).resolve().parents[1]
UNET = str(ROOT / "examples" / "unet.py")
SMALL = ["--input-size", "3x32x32", "--model-arg", "width=4"]  # a 4-wide U-Net at 32×32


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


# --- sites -------------------------------------------------------------------------------------


def test_sites_table(capsys):
    code, out, err = run(capsys, "sites", UNET, *SMALL)
    assert code == 0, err
    text = " ".join(out.split())
    assert "18 eligible sites (10 encoder, 8 decoder)" in text
    # decoder.3.conv.3 (4 → 4 at 32×32): a block costs more than the conv, so presets keep it
    assert "the 'decoder' preset picks 7" in text
    assert "decoder.3.conv.3: a block costs 1.23× the conv's FLOPs; presets keep the conv" in text
    assert "8 site(s) with fewer than 4 channels per lattice position" in text  # C_in ≤ 12
    assert "decoder.3.conv.3" in out and "encoder.0.0" in out
    assert "Traced with export" in text
    assert "Not eligible: 1 1×1 kernel" in text


def test_sites_json(capsys):
    code, out, err = run(capsys, "sites", UNET, *SMALL, "--json", "--preset", "encoder",
                         "--exclude", "bottleneck")
    assert code == 0, err
    data = json.loads(out)  # stdout is exactly one JSON object; the table went to stderr
    assert data["n_sites"] == 18 and (data["n_encoder"], data["n_decoder"]) == (10, 8)
    # encoder.0.* (3 → 4 and 4 → 4): a block costs more than the conv there
    assert data["selected"] == [f"encoder.{i}.{j}" for i in range(1, 4) for j in (0, 3)]
    assert data["trace_path"] == "export" and data["input_size"] == [3, 32, 32]
    site = {s["name"]: s for s in data["sites"]}["decoder.0.conv.0"]
    # Up(64, 32) at 4×4 of a 32×32 input: C_in = 32 (up-convolved 64) + 32 (skip), C_out = 32
    assert (site["in_channels"], site["out_channels"], site["input_hw"]) == (64, 32, [4, 4])
    assert site["macs"] == 32 * 64 * 9 * 4 * 4 and site["role"] == "decoder"
    assert site["lattice_q"] == 64 // 4 and 0 < site["default_block_ratio"] < 1
    head = {s["name"]: s for s in data["sites"]}["encoder.0.0"]
    assert head["lattice_q"] == 1 and head["default_block_ratio"] > 1
    model = load_model(UNET, width=4)
    assert data["base_params"] == sum(p.numel() for p in model.parameters())
    assert "eligible sites" in err


def test_sites_include_and_widening_options(capsys):
    code, out, _ = run(capsys, "sites", "timm:resnet18", "--input-size", "3x32x32", "--json",
                       "--strided", "--include", r"layer4\.", "--no-flops")
    assert code == 0
    data = json.loads(out)
    assert data["n_sites"] == 16 and data["strided"] and data["base_flops"] is None
    assert data["selected"] == ["layer4.0.conv1", "layer4.0.conv2", "layer4.1.conv1",
                                "layer4.1.conv2"]
    assert {s["name"]: s["stride"] for s in data["sites"]}["layer4.0.conv1"] == 2


def test_sites_says_when_a_conv_is_called_twice(capsys, tmp_path):
    f = tmp_path / "shared.py"
    f.write_text(textwrap.dedent("""
        from torch import nn
        from torch.nn import functional as F
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.stem = nn.Conv2d(3, 8, 3, padding=1)
                self.shared = nn.Conv2d(8, 8, 3, padding=1)
            def forward(self, x):
                y = self.shared(self.stem(x))
                return self.shared(F.max_pool2d(y, 2))
        model = Net()
    """))
    code, out, err = run(capsys, "sites", str(f), "--input-size", "3x16x16", "--preset", "fullcube")
    assert code == 0, err
    text = " ".join(out.split())
    assert "1 site(s) called more than once (one block serves every call): shared" in text
    assert "2 eligible sites" in text
    code, out, _ = run(capsys, "sites", str(f), "--input-size", "3x16x16", "--json")
    site = {s["name"]: s for s in json.loads(out)["sites"]}["shared"]
    assert site["calls"] == 2 and site["call_shapes"] == [[16, 16], [8, 8]]
    assert site["macs"] == 8 * 8 * 9 * (16 * 16 + 8 * 8)


# --- convert -----------------------------------------------------------------------------------


def test_convert_writes_a_checkpoint_that_load_rebuilds(capsys, tmp_path):
    out_dir = tmp_path / "unet-cube"
    torch.manual_seed(123)
    code, out, err = run(capsys, "convert", UNET, *SMALL, "-o", str(out_dir), "--groups", "2",
                         "--insert", "after:bottleneck")
    assert code == 0, err
    assert {"model.safetensors", "plan.json"} <= {p.name for p in out_dir.iterdir()}
    plan = Plan.load(out_dir / "plan.json")
    assert plan.model == UNET and plan.input_size == (3, 32, 32)
    assert plan.model_kwargs == {"num_classes": 1, "in_channels": 3, "width": 4}
    # every decoder site but decoder.3.conv.3, where a block costs more than the conv
    assert len(plan.sites) == 7 and all(n.startswith("decoder.") for n in plan.sites)
    assert "decoder.3.conv.3" not in plan.sites
    assert set(plan.sites.values()) == {CubeConfig(groups=2)}
    assert list(plan.insertions) == ["bottleneck"]
    text = " ".join(out.split())
    assert "sites replaced 7 of 18" in text and "blocks inserted 1" in text
    assert "decoder.3.conv.3: kept, a block costs" in text
    assert "+0.000% vs fvcore" in text

    # The same seed, the same steps: the weights the CLI saved are the converted model's.
    torch.manual_seed(123)
    reference = convert(load_model(UNET, width=4), plan).eval()
    loaded = cubesearch.load(out_dir)
    assert len(cube_blocks(loaded)) == 8
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), reference(x), rtol=0, atol=0)
    # unconverted layers keep the original model's weights
    torch.manual_seed(123)
    original = load_model(UNET, width=4)
    torch.testing.assert_close(loaded.state_dict()["encoder.0.0.weight"],
                               original.state_dict()["encoder.0.0.weight"])


def test_convert_json_and_preset(capsys):
    code, out, err = run(capsys, "convert", UNET, *SMALL, "--json", "--preset", "fullcube",
                         "--router", "post", "--no-attention", "--depth", "2")
    assert code == 0, err
    data = json.loads(out)
    cfg = CubeConfig(router="post", attention=False, depth=2)
    # fullcube leaves out the sites where this block costs more FLOPs than the conv
    report = find_sites(load_model(UNET, width=4), (3, 32, 32))
    dear = {s.name for s in report.sites if s.block_ratio(cfg) > 1}
    assert len(dear) == 4 and {r["site"] for r in data["sites"]} == set(report.names) - dear
    assert data["sites_replaced"] == 14 and data["sites_eligible"] == 18
    assert data["after"]["gflops"] == data["after"]["gflops_cost_model"]
    assert data["cost_model_error"] == 0.0
    assert data["out"] is None and data["output_shape"] == [1, 1, 32, 32]
    assert {r["config_short"] for r in data["sites"]} == {cfg.short()}
    model = load_model(UNET, width=4)
    assert data["before"]["params"] == sum(p.numel() for p in model.parameters())
    plan = Plan.from_dict(data["plan"])
    converted = convert(model, plan)
    assert data["after"]["params"] == sum(p.numel() for p in converted.parameters())


def test_convert_from_a_plan_file(capsys, tmp_path):
    plan = Plan(model=UNET, model_kwargs={"num_classes": 2, "width": 4}, input_size=(3, 32, 32),
                sites={"encoder.1.0": CubeConfig(lattice_stride=1)})
    path = plan.save(tmp_path / "plan.json")
    out_dir = tmp_path / "out"
    code, out, err = run(capsys, "convert", "--plan", str(path), "-o", str(out_dir), "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["sites_replaced"] == 1 and data["output_shape"] == [1, 2, 32, 32]
    saved = Plan.load(out_dir)
    assert saved.sites == plan.sites and saved.model_kwargs["num_classes"] == 2
    assert cubesearch.load(out_dir)(torch.zeros(1, 3, 32, 32)).shape == (1, 2, 32, 32)


def test_no_eligible_conv_is_an_empty_plan(capsys, tmp_path):
    f = tmp_path / "pointwise.py"
    f.write_text("from torch import nn\n"
                 "def build_model():\n"
                 "    return nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 1, 1))\n")
    code, out, err = run(capsys, "sites", str(f), "--input-size", "3x16x16")
    assert code == 0, err
    assert "No eligible 3×3 conv" in " ".join(out.split())
    out_dir = tmp_path / "out"
    code, out, err = run(capsys, "convert", str(f), "--input-size", "3x16x16", "-o", str(out_dir))
    assert code == 0, err
    assert "no eligible 3×3 conv" in " ".join(out.split()) and "the plan is empty" in out
    assert Plan.load(out_dir).sites == {}


# --- bad input: one error line, exit 1, nothing written -------------------------------------------


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    files = {
        "syntax": "import torch\ndef build_model(:\n    pass\n",
        "raises": "x = 1\nraise RuntimeError('broken at import')\n",
        "empty": "from torch import nn\nNET_SIZE = 3\n",
        "plan_model": "",
    }
    out = {}
    for name, text in files.items():
        path = tmp_path / f"{name}.py"
        path.write_text(text)
        out[name] = path
    plan = Plan(model=UNET, model_kwargs={"width": 4}, input_size=(3, 32, 32),
                sites={"decoder.0.conv.9": CubeConfig()})
    out["plan"] = plan.save(tmp_path / "badplan.json")
    out["plan_v2"] = tmp_path / "plan_v2.json"
    out["plan_v2"].write_text(json.dumps({**plan.to_dict(), "version": 2, "sites": {}}))
    out["plan_knob"] = tmp_path / "plan_knob.json"
    out["plan_knob"].write_text(json.dumps({**plan.to_dict(),
                                            "sites": {"encoder.0.0": {"groups": -1}}}))
    return out


BAD = [
    ("missing", ["does/not/exist.py"], r"^error: no such file: does/not/exist.py$"),
    ("syntax", ["{syntax}"], r"^error: {syntax}:2: syntax error: "),
    ("raises", ["{raises}"],
     r"^error: {raises}:2: RuntimeError: broken at import \(while importing {raises}\)$"),
    ("empty", ["{empty}"], r"^error: {empty} defines neither build_model\(\) nor a module-level "
                           r"`model`"),
    ("timm", ["timm:resnt18"], r"^error: unknown timm model 'resnt18'; did you mean resnet18"),
    ("smp", ["smp:Unet:resnet1"], r"^error: unknown smp encoder 'resnet1'; did you mean resnet18"),
    ("smp_arch", ["smp:UNet3:resnet18"], r"^error: unknown smp architecture 'UNet3'"),
    ("plan_sites", ["--plan", "{plan}"],
     r"^error: plan names sites that do not exist: 'decoder.0.conv.9' is not a conv of "
     r".*unet.py \(did you mean .*decoder.0.conv.0"),
    ("plan_version", ["--plan", "{plan_v2}"],
     r"^error: {plan_v2}: plan version 2 is not supported \(this cubesearch reads version 1\)$"),
    ("plan_knob", ["--plan", "{plan_knob}"],
     r"^error: {plan_knob}: sites: 'encoder.0.0': CubeConfig.groups: Input should be greater"),
    ("input_size", [UNET, "--input-size", "3x40x40", "--model-arg", "width=4"],
     r"^error: the model rejects input 1×3×40×40: ValueError: U-Net needs H and W divisible "
     r"by 16, got \(40, 40\)$"),
    ("input_size_text", [UNET, "--input-size", "big"], r"^error: input size 'big' is not "
                                                        r"understood"),
    ("knob", [UNET, *SMALL, "--groups", "0"], r"^error: bad block knob: CubeConfig.groups"),
    ("router", [UNET, *SMALL, "--router", "sideways"], r"^error: bad block knob: CubeConfig.router"),
    ("preset", [UNET, *SMALL, "--preset", "most"], r"^error: unknown preset 'most'"),
    ("insert", [UNET, *SMALL, "--insert", "after:nowhere"],
     r"^error: no module named 'nowhere' in the model"),
    ("no_model", [], r"^error: missing MODEL \(a model spec, or --plan plan.json\)$"),
]


@pytest.mark.parametrize(("case", "args", "pattern"), BAD, ids=[b[0] for b in BAD])
def test_bad_input(capsys, tmp_path, case, args, pattern):
    import re

    files = {k: str(v) for k, v in _bad_files(tmp_path).items()}
    args = [a.format(**files) for a in args]
    pattern = pattern.format(**{k: re.escape(v) for k, v in files.items()})
    out_dir = tmp_path / "out"
    code, out, err = run(capsys, "convert", *args, "-o", str(out_dir))
    lines = err.strip().splitlines()
    assert code == 1
    assert len(lines) == 1, err
    assert re.search(pattern, lines[0]), lines[0]
    assert "Traceback" not in err + out
    assert not out_dir.exists()
    if case in ("missing", "syntax", "raises", "empty", "timm", "input_size"):
        code2, _, err2 = run(capsys, "sites", *args)  # `sites` says the same
        assert code2 == 1 and err2.strip() == lines[0]


def test_existing_folder_that_is_not_a_checkpoint_is_left_alone(capsys, tmp_path):
    out_dir = tmp_path / "precious"
    out_dir.mkdir()
    (out_dir / "notes.txt").write_text("keep me")
    code, _, err = run(capsys, "convert", UNET, *SMALL, "-o", str(out_dir))
    assert code == 1
    assert err.strip() == (f"error: {out_dir} exists and is not a cubesearch checkpoint; "
                           "choose a new or empty folder")
    assert [p.name for p in out_dir.iterdir()] == ["notes.txt"]


def test_debug_shows_the_traceback(capsys):
    code, _, err = run(capsys, "--debug", "convert", "timm:resnt18")
    assert code == 1
    assert err.startswith("Traceback")
    assert err.strip().splitlines()[-1].startswith(
        "error: unknown timm model 'resnt18'; did you mean resnet18")


def test_error_in_a_real_process_is_one_line(tmp_path):
    """Outside pytest's capture: no warnings, no log lines, one error line on stderr."""
    f = tmp_path / "m.py"
    f.write_text(textwrap.dedent("""
        import torch
        from torch import nn
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv2d(3, 4, 3, padding=1)
            def forward(self, x):
                torch._check(x.shape[-1] == 48, lambda: "this net takes 48 px only")
                return self.conv(x)
        model = Net()
    """))
    env = {**os.environ, "PYTHONWARNINGS": "default"}
    done = subprocess.run([sys.executable, "-m", "cubesearch", "convert", str(f), "--input-size",
                           "3x32x32", "-o", str(tmp_path / "out")], capture_output=True,
                          text=True, env=env, timeout=300)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        "error: the model rejects input 1×3×32×32: RuntimeError: this net takes 48 px only"]
    assert not (tmp_path / "out").exists()


def test_convert_a_plan_file_with_widths(capsys, tmp_path):
    plan = Plan(model=UNET, model_kwargs={"num_classes": 1, "width": 4}, input_size=(3, 32, 32),
                widths={"decoder.0.conv.0": 0.5}, sites={"decoder.0.conv.3": CubeConfig()})
    code, out, err = run(capsys, "convert", "--plan", str(plan.save(tmp_path / "plan.json")))
    assert code == 0, err
    text = " ".join(out.split())
    assert "GFLOPs (cost model)" not in text and "GFLOPs (fvcore)" in text
    assert "narrowed 32→16 output channels (width 0.5)" in text

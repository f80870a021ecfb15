"""`convert_spec` → `ConvertReport`: the convert command as a Python API, its figures checked
against fvcore and the converted model itself."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import cubesearch
from cubesearch.blocks import CubeConfig
from cubesearch.core.errors import CubesearchError
from cubesearch.cost.pricing import reference_flops
from cubesearch.cost.report import ConvertReport, convert_spec
from cubesearch.models.load import load_model
from cubesearch.plan.plan import Plan

UNET = str(Path(__file__).resolve().parents[1] / "examples" / "unet.py")
SMALL = dict(input_size="3x32x32", model_kwargs={"width": 4})


def test_report_figures_match_fvcore_and_the_model(tmp_path):
    report = convert_spec(UNET, preset="decoder", config=CubeConfig(groups=2),
                          insert=["after:bottleneck"], out=tmp_path / "ck", **SMALL)
    assert isinstance(report, ConvertReport)
    base = load_model(UNET, width=4)
    assert report.before_flops == reference_flops(base, (3, 32, 32))
    assert report.before_params == sum(p.numel() for p in base.parameters())
    assert report.after_flops == reference_flops(report.converted, (3, 32, 32))
    assert report.after_params == sum(p.numel() for p in report.converted.parameters())
    assert report.estimate_flops == report.after_flops and report.cost_model_error == 0.0
    assert report.output_shape == (1, 1, 32, 32)
    decoder = report.sites_report.by_role("decoder")
    dear = [s.name for s in decoder if s.block_ratio(CubeConfig(groups=2)) > 1]
    assert dear == ["decoder.3.conv.3"]  # 4 → 4 channels: the block's router alone is 16 MACs/px
    assert sorted(report.plan.sites) == sorted(s.name for s in decoder if s.name not in dear)
    assert any(n.startswith("decoder.3.conv.3: kept, a block costs") for n in report.notes)
    assert list(report.plan.insertions) == ["bottleneck"]
    assert len(report.sites) == len(report.plan.sites) + 1  # one row per block
    data = report.to_dict()
    assert data["sites_replaced"] == len(report.plan.sites) and data["out"] == str(tmp_path / "ck")
    loaded = cubesearch.load(tmp_path / "ck")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), report.converted.eval()(x))


def test_a_plan_file_gives_the_model_and_its_sites(tmp_path):
    plan = Plan(model=UNET, model_kwargs={"num_classes": 2, "width": 4}, input_size=(3, 32, 32),
                sites={"encoder.1.0": CubeConfig(lattice_stride=1)})
    report = convert_spec(plan=plan.save(tmp_path / "plan.json"))
    assert report.model == UNET and report.input_size == (3, 32, 32)
    assert list(report.plan.sites) == ["encoder.1.0"] and report.output_shape == (1, 2, 32, 32)


def test_bad_requests_fail_before_any_work(tmp_path):
    with pytest.raises(CubesearchError, match="unknown preset 'most'"):
        convert_spec(UNET, preset="most", **SMALL)
    with pytest.raises(CubesearchError, match="missing MODEL"):
        convert_spec()
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "notes.txt").write_text("x")
    with pytest.raises(CubesearchError, match="exists and is not a cubesearch checkpoint"):
        convert_spec(UNET, out=tmp_path / "keep", **SMALL)


def test_a_plan_file_with_widths_is_priced_on_the_built_model(tmp_path):
    from cubesearch.cost.pricing import plan_flops_params

    plan = Plan(model=UNET, model_kwargs={"num_classes": 1, "width": 4}, input_size=(3, 32, 32),
                widths={"decoder.0.conv.0": 0.5}, sites={"decoder.0.conv.3": CubeConfig()})
    report = convert_spec(plan=plan.save(tmp_path / "plan.json"), out=tmp_path / "ck")
    assert report.plan.widths == {"decoder.0.conv.0": 0.5}
    assert (report.after_flops, report.after_params) == plan_flops_params(
        load_model(UNET, width=4), report.plan)
    assert report.estimate_flops is None and report.cost_model_error is None
    (row,) = report.sites  # the block after the narrowed conv takes its 16 channels, not 32
    assert (row["site"], row["in"], row["out"]) == ("decoder.0.conv.3", 16, 32)
    assert "decoder.0.conv.0: narrowed 32→16 output channels (width 0.5)" in " ".join(report.notes)
    data = report.to_dict()
    assert data["after"]["gflops_cost_model"] is None and data["widths"] == plan.widths
    loaded = cubesearch.load(tmp_path / "ck")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), report.converted.eval()(x))

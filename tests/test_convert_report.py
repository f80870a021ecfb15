"""`convert_spec` → `ConvertReport`: the convert command as a Python API, its figures checked
against fvcore and the converted model itself."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import cubesearch
from cubesearch.blocks import CubeConfig
from cubesearch.conversion_report import ConvertReport, convert_spec
from cubesearch.cost import reference_flops
from cubesearch.errors import CubesearchError
from cubesearch.models import load_model
from cubesearch.plan import Plan

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

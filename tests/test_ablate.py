"""`cubesearch ablate` (issue 17; issue 31: read off the site map): the one-knob-at-a-time
variants of the default config, each row's IoU the map's additive prediction (the baseline's IoU
plus its sites' cells' ΔIoU), priced by the cost model; JSON and markdown agree; a map built by
`cubesearch map` with the same settings is reused, not measured again; bad input is one error
line naming the option."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import torch

from cubesearch.blocks import CubeConfig
from cubesearch.cli import main
from cubesearch.core.errors import CubesearchError
from cubesearch.cost.pricing import CostModel
from cubesearch.models.load import load_model
from cubesearch.plan.sites import find_sites
from cubesearch.plan.space import KNOBS, SearchSpace
from cubesearch.search.ablation import DEFAULT, IOU_LABEL, PRESETS, ablate
from cubesearch.search.sitemap import site_map

TINY = str(Path(__file__).parent / "assets" / "tiny_seg.py")
SIZE = (3, 64, 64)
# a small map: a 1-epoch baseline, each cell fitted by 2 distillation batches
OPTS = dict(input_size=SIZE, tile_size=32, train_tiles=16, val_tiles=8, batch_size=8,
            baseline_epochs=1.0, distill_steps=2)
CLI_OPTS = ["--input-size", "3x64x64", "--tile-size", "32", "--train-tiles", "16", "--val-tiles",
            "8", "--batch-size", "8", "--baseline-epochs", "1", "--distill-steps", "2"]


@contextlib.contextmanager
def one_thread():
    """Tiny tensors: one thread is faster, and much faster when other jobs share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The map as `cubesearch map --subset one-knob` builds it, then ablate in the same folder."""
    out = tmp_path_factory.mktemp("ablate") / "runs"
    lines: list[str] = []
    with one_thread():  # a module fixture is set up before the autouse function fixture
        built = site_map(TINY, subset="one-knob", out=str(out), progress=False, **OPTS)
        result = ablate(TINY, out=str(out), progress=False, log=lines.append, **OPTS)
    return result, out, lines, built


def _expected_configs(space: SearchSpace) -> set[CubeConfig]:
    default = space.default_config()
    configs = {default}
    for knob in KNOBS:
        for value in getattr(space.knobs, knob):
            if value != getattr(default, knob):
                configs.add(CubeConfig(**{**default.to_dict(), knob: value}))
    return configs


def test_rows_are_the_one_knob_variants_the_space_allows(run):
    result, _, _, _ = run
    space = SearchSpace.load("default")
    expected = _expected_configs(space)
    assert result.presets == list(PRESETS)
    report = find_sites(load_model(TINY), SIZE)
    searchable = space.searchable(report.sites)
    for preset in PRESETS:
        rows = result.preset_rows(preset)
        assert rows[0].knob == DEFAULT and rows[0].config == space.default_config()
        assert {r.config for r in rows} == expected
        assert len(rows) == len(expected)  # each once
        for r in rows[1:]:  # exactly one knob differs from the default, and it is the row's
            changed = [k for k in KNOBS if getattr(r.config, k) != getattr(rows[0].config, k)]
            assert changed == [r.knob] and getattr(r.config, r.knob) == r.value
        sites = {s.name for s in searchable if preset == "fullcube" or s.role == "decoder"}
        for r in rows:  # every preset site replaced, unless the config cannot go there
            assert set(r.plan) | {k.partition(":")[0] for k in r.kept} == sites
            assert set(r.plan.values()) == {r.config}
    # the first convs (C_in 3 and 8: lattice q 1 and 2) are not searched (min_lattice_q 4), so
    # router 'none' goes at every searched site (C_in 16)
    assert {s.name for s in searchable} == {"encoder.3.0", "decoder.0.0", "decoder.1.0"}
    none = next(r for r in result.preset_rows("fullcube") if r.knob == "router" and r.value == "none")
    assert none.kept == [] and len(none.plan) == 3 and none.note == ""


def test_each_row_is_the_maps_additive_prediction_and_the_map_is_reused(run):
    result, out, _, built = run
    assert built.measured > 0 and result.measured == 0  # map.json's cells, none measured again
    assert result.map == out / "map.json"
    data = json.loads(result.map.read_text())
    assert all(c["run"] == 1 for c in data["cells"])  # still the cells the map's own run measured
    base = data["baseline_iou"]
    cells = {(c["site"], c["option"]): c["delta_iou"] for c in data["cells"]}
    assert result.reference["iou"] == base
    for r in result.rows:  # baseline IoU + Σ over the row's sites of that config's cell's ΔIoU
        assert r.iou == pytest.approx(base + sum(cells[(site, cfg.short())] for site, cfg in r.plan.items()),
                                      abs=1e-12)
    for preset in PRESETS:
        rows = result.preset_rows(preset)
        assert rows[0].delta_iou == 0.0
        for r in rows[1:]:
            assert r.delta_iou == pytest.approx(r.iou - rows[0].iou, abs=1e-12)
    # the decoder preset's rows add up the same cells, minus the encoder site's
    enc = "encoder.3.0"
    for full, dec in zip(result.preset_rows("fullcube"), result.preset_rows("decoder"), strict=True):
        assert full.iou - dec.iou == pytest.approx(cells[(enc, full.config.short())], abs=1e-12)
    assert not result.confirmed and all(r.confirmed_iou is None for r in result.rows)


def test_costs_are_the_cost_model(run):
    result, _, _, _ = run
    cost = CostModel(find_sites(load_model(TINY), SIZE))
    assert result.reference["gflops"] == pytest.approx(cost.flops({}) / 1e9)
    for r in result.rows:
        assert r.gflops == pytest.approx(cost.flops(r.plan) / 1e9, rel=1e-12)
        assert r.params == cost.params(r.plan)


def test_json_and_markdown_agree_with_the_result(run):
    result, out, _, _ = run
    data = json.loads(result.to_json())
    assert data["iou"] == IOU_LABEL and data["map"] == str(out / "map.json")
    assert len(data["rows"]) == len(result.rows)
    for d, r in zip(data["rows"], result.rows, strict=True):
        assert (d["preset"], d["knob"], d["iou"], d["delta_iou"], d["gflops"], d["params"]) == (
            r.preset, r.knob, r.iou, r.delta_iou, r.gflops, r.params)
        assert CubeConfig.from_dict(d["config"]) == r.config and d["sites"] == len(r.plan)
    assert data["reference"]["iou"] == result.reference["iou"]
    # one markdown file per preset, beside map.json, holding exactly the result's table
    assert result.files == [out / f"ablation-{p}.md" for p in PRESETS]
    for preset, file in zip(PRESETS, result.files, strict=True):
        text = file.read_text()
        assert text == result.to_markdown(preset)
        assert f"| {IOU_LABEL} |" in text and "additive" in text
        table = [line for line in text.splitlines() if line.startswith(f"| {preset} |")]
        assert len(table) == len(result.preset_rows(preset))
        for line, r in zip(table, result.preset_rows(preset), strict=True):
            cells = [c.strip() for c in line.strip("|").split("|")]
            assert cells[1] == r.knob
            assert float(cells[3]) == pytest.approx(r.iou, abs=5e-5)
            assert float(cells[4]) == pytest.approx(r.delta_iou, abs=5e-5)
            assert float(cells[5]) == pytest.approx(r.gflops, abs=5e-4)
            assert int(cells[6].replace(",", "")) == r.params
    assert not list(out.glob(".ablation-*"))  # no temporary file left


def test_the_cli_reads_the_same_map(run, capsys):
    result, out, _, _ = run
    assert main(["ablate", TINY, "-o", str(out), "--json", "--knob", "attention", *CLI_OPTS]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["measured"] == 0
    expected = [r for r in result.rows if r.knob in (DEFAULT, "attention")]
    assert [(d["preset"], d["knob"], d["value"], d["gflops"], d["iou"]) for d in data["rows"]] == [
        (r.preset, r.knob, r.value, r.gflops, r.iou) for r in expected]
    assert main(["ablate", TINY, "-o", str(out), "--preset", "decoder", "--knob", "router",
                 *CLI_OPTS]) == 0
    text = capsys.readouterr().out
    assert "decoder" in text and "post" in text and "fullcube" not in text
    assert "predicted IoU" in text and "additive" in text


@pytest.mark.parametrize(("args", "message"), [
    (["--preset", "encoder"], "--preset 'encoder': unknown preset"),
    (["--knob", "colour"], "--knob 'colour': unknown knob 'colour'"),
    (["--knob", "depth=4"], "--knob depth=4: space 'default' allows depth 1, 2"),
    (["--knob", "attention=maybe"], "attention is on or off"),
    (["--knob", "act"], "--knob act: nothing to ablate"),
    (["--space", "SPACE"], "no eligible 3×3 conv matches the space's sites"),
])
def test_bad_input_is_one_error_line(tmp_path, capsys, args, message):
    space = tmp_path / "none.yaml"
    space.write_text("name: none\nsites: {include: ['^nothing$']}\n")
    args = [str(space) if a == "SPACE" else a for a in args]
    out = tmp_path / "runs"
    assert main(["ablate", TINY, "-o", str(out), *args, *CLI_OPTS]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (out / "map.json").exists() and not (out / "baselines").exists()  # refused first


def test_knob_values_outside_the_space_are_refused_in_python(tmp_path):
    with pytest.raises(CubesearchError, match="--knob lattice_stride=3"):
        ablate(TINY, knobs={"lattice_stride": [3]}, out=str(tmp_path / "runs"), **OPTS)
    assert not (tmp_path / "runs").exists()


def test_confirm_trains_each_row_once(run):
    result, out, _, _ = run
    confirmed = ablate(TINY, out=str(out), knobs=["attention"], confirm=True, epochs_per_trial=0.5,
                       progress=False, log=lambda line: None, **OPTS)
    assert confirmed.confirmed and len(confirmed.rows) == 4  # 2 presets × (default, attention off)
    assert confirmed.reference["confirmed_iou"] is not None
    for r in confirmed.rows:
        assert 0.0 <= r.confirmed_iou <= 1.0 and Path(r.checkpoint, "model.safetensors").is_file()
        assert json.loads(Path(r.checkpoint, "metrics.json").read_text())["epochs"] == 0.5
        assert r.iou == next(x.iou for x in result.rows if (x.preset, x.knob) == (r.preset, r.knob))
    for preset in PRESETS:
        rows = confirmed.preset_rows(preset)
        assert rows[0].confirmed_delta == 0.0
        assert rows[1].confirmed_delta == pytest.approx(rows[1].confirmed_iou - rows[0].confirmed_iou)
    trials = sorted((out / "trials" / "ablation-0.5ep").glob("trial_*"))
    assert len(trials) == 5  # the reference and 4 rows
    assert "confirmed IoU" in confirmed.files[0].read_text()
    again = ablate(TINY, out=str(out), knobs=["attention"], confirm=True, epochs_per_trial=0.5,
                   progress=False, log=lambda line: None, **OPTS)
    assert sorted((out / "trials" / "ablation-0.5ep").glob("trial_*")) == trials  # reused
    assert [r.confirmed_iou for r in again.rows] == [r.confirmed_iou for r in confirmed.rows]

"""`cubesearch calibrate`: the plans it picks, the rank figures against their formulas, resuming
(a second run trains nothing), and the figures in the study, search.json and export's index."""

from __future__ import annotations

import json
import os
import shutil

import pytest

import cubesearch.exporting.calibration as calibration
import cubesearch.exporting.export as exporting
from cubesearch.cli import main
from cubesearch.core.errors import CubesearchError
from cubesearch.exporting.calibration import calibrate, choose_plans, rank_figures
from cubesearch.search.pareto import ParetoPoint
from cubesearch.training.finetune import Recipe


def point(trial: int, iou: float, gflops: float, label: str = "") -> ParetoPoint:
    return ParetoPoint(trial=trial, iou=iou, gflops=gflops, params=1, label=label, checkpoint=f"t{trial}")


def test_plans_spread_over_the_front_with_the_reference_first():
    points = [point(0, 0.50, 10.0, "baseline"), point(1, 0.45, 2.0), point(2, 0.30, 2.5),
              point(3, 0.48, 6.0), point(4, 0.40, 5.5), point(5, 0.47, 9.0)]
    # front: 1 (2.0), 3 (6.0), 0 (10.0); targets 2.0, 6.0, 10.0 after the reference → 1, 3, 5
    assert [p.trial for p in choose_plans(points, 4)] == [1, 3, 5, 0]
    assert [p.trial for p in choose_plans(points, 2)] == [1, 0]  # the reference, then the cheapest
    assert len(choose_plans(points, 99)) == 6  # as many as there are
    with pytest.raises(CubesearchError, match="≥ 2 trained plans; the study has 1"):
        choose_plans(points[:1], 3)


def test_a_tight_budget_keeps_the_unconverted_reference():
    """The references are trained over budget too: the unconverted one still goes first."""
    points = [point(0, 0.50, 10.0, "baseline"), point(1, 0.45, 2.0), point(3, 0.48, 6.0),
              point(5, 0.47, 7.0)]
    points[0].feasible = False  # a 70% budget: the unconverted model is over it
    chosen = choose_plans(points, 3)
    assert chosen[-1].label == "baseline" and [p.trial for p in chosen] == [1, 3, 0]


def test_rank_figures_match_their_formulas():
    proxy = [0.1, 0.2, 0.3, 0.4]
    seeds = [[0.5, 0.6, 0.8, 0.7], [0.5, 0.7, 0.6, 0.9]]  # mean: 0.5, 0.65, 0.7, 0.8 (proxy's order)
    fig = rank_figures(proxy, seeds)
    assert fig["kendall_tau"] == pytest.approx(1.0) and fig["spearman_rho"] == pytest.approx(1.0)
    # seed 0 vs seed 1: pairs (0,1)+ (0,2)+ (0,3)+ (1,2)- (1,3)+ (2,3)- → (4 - 2) / 6
    assert fig["seed_kendall_tau"] == pytest.approx(2 / 6)
    # ranks 1,2,4,3 vs 1,3,2,4: Σd² = 0+1+4+1 = 6 → 1 - 6·6 / (4·15)
    assert fig["seed_spearman_rho"] == pytest.approx(1 - 36 / 60)
    assert rank_figures([0.0, 0.0], [[0.1, 0.2], [0.1, 0.3]])["kendall_tau"] is None  # constant


def test_calibrate_resumes_and_records_its_figures(tiny_study, tmp_path, monkeypatch):
    src, _ = tiny_study
    study = tmp_path / "study"
    shutil.copytree(src, study)
    recipe = Recipe(epochs=1, distill_steps=2, patience=None)
    first = calibrate(study, plans=2, seeds=2, recipe=recipe)
    assert (first.trained, first.reused) == (4, 0)
    fig = first.figures
    assert fig["n_plans"] == 2 and fig["seeds"] == [0, 1] and fig["plans"][-1]["label"] == "baseline"
    runs = {(r["trial"], r["seed"]): r for r in
            (json.loads(f.read_text()) for f in (study / "calibration").glob("trial_*-seed*.json"))}
    assert len(runs) == 4
    per_seed = [[runs[p["trial"], s]["iou"] for p in fig["plans"]] for s in (0, 1)]
    expected = rank_figures([p["proxy_iou"] for p in fig["plans"]], per_seed)
    assert {k: fig[k] for k in expected} == expected
    assert json.loads((study / "search.json").read_text())["calibration"] == json.loads(json.dumps(fig))
    st = exporting.open_study_source(study)
    assert st.user_attrs["calibration"]["seed_kendall_tau"] == fig["seed_kendall_tau"]
    # a re-run trains nothing new, and says the same
    monkeypatch.setattr(calibration, "train_final", lambda *a, **k: pytest.fail("trained again"))
    again = calibrate(study, plans=2, seeds=2, recipe=recipe)
    assert (again.trained, again.reused) == (0, 4) and again.figures == fig
    # export shows it beside the front
    res = exporting.export(study, out=tmp_path / "e", select="trial:0", formats=("safetensors",),
                           progress=False)
    assert res.calibration["n_plans"] == 2
    assert fig["proxy"] == "trial IoU (1-epoch fine-tune)" and fig["backend"] == "local"
    assert ("Calibration: the search's trial IoU (1-epoch fine-tune) ranks 2 of its plans"
            in (tmp_path / "e" / "pareto.md").read_text())


@pytest.mark.parametrize("args, message", [
    (["--plans", "1"], "--plans 1: calibration ranks at least 2 plans"),
    (["--seeds", "1"], "--seeds 1: at least 2"),
    (["--kd-weight", "-1"], "--kd-weight: Input should be greater than or equal to 0"),
    (["--backend", "slurm"], "--backend 'slurm': choose local or ray"),
])
def test_bad_calibrate_input_is_one_error_line(tiny_study, capsys, args, message):
    src, _ = tiny_study
    before = sorted(p.name for p in src.iterdir())
    assert main(["calibrate", str(src), *args]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1]
    assert sorted(p.name for p in src.iterdir()) == before  # no calibration folder made


@pytest.mark.slow  # starts a local Ray instance (~15 s) and trains 4 tiny runs on its workers
def test_calibration_runs_on_ray_and_resumes_anywhere(tiny_study, tmp_path):
    pytest.importorskip("ray")
    src, _ = tiny_study
    study = tmp_path / "study"
    shutil.copytree(src, study)
    recipe = Recipe(epochs=0.5, distill_steps=2, patience=None)
    res = calibrate(study, plans=2, seeds=2, recipe=recipe, backend="ray")
    assert (res.trained, res.reused) == (4, 0) and res.figures["backend"] == "ray"
    runs = [json.loads(f.read_text()) for f in (study / "calibration").glob("trial_*-seed*.json")]
    assert len(runs) == 4 and all(r["pid"] != os.getpid() for r in runs)  # trained on Ray workers
    # the records are the driver's: a local re-run (same recipe and data) reuses every one
    again = calibrate(study, plans=2, seeds=2, recipe=recipe, backend="local")
    assert (again.trained, again.reused) == (0, 4)
    assert {k: again.figures[k] for k in ("kendall_tau", "seed_kendall_tau", "plans")} == \
        {k: res.figures[k] for k in ("kendall_tau", "seed_kendall_tau", "plans")}

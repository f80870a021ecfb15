"""Export: every --select form, the model folders, load round trip, tamper detection, atomicity,
and the Pareto index (csv, md, png, html)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

import cubesearch
import cubesearch.exporting.export as exporting
from cubesearch import CubeBlock, CubeConfig
from cubesearch.blocks import fold_blocks
from cubesearch.core.errors import CubesearchError
from cubesearch.plan.checkpoint import MANIFEST, load
from cubesearch.plan.conversion import convert
from cubesearch.plan.plan import Plan
from cubesearch.search.pareto import non_dominated
from cubesearch.training import train
from cubesearch.training.finetune import Recipe

TINY = str(Path(__file__).parent / "assets" / "tiny_seg.py")


@pytest.fixture(scope="module")
def searched(tiny_study):
    """A finished tiny search (6 trials, baseline and FullCube enqueued) to export from."""
    return tiny_study


@pytest.fixture(scope="module")
def exported(searched, tmp_path_factory):
    out, _ = searched
    dest = tmp_path_factory.mktemp("exported")
    return dest, exporting.export(out, out=dest, select="pareto", progress=False)


def test_pareto_selection_exports_exactly_the_front(searched, exported):
    _, result = searched
    dest, res = exported
    trained = [p for p in result.points if p.checkpoint]
    assert sorted(m["trial"] for m in res.models) == sorted(p.trial for p in non_dominated(trained))
    for m in res.models:
        folder = Path(m["folder"])
        names = {p.name for p in folder.iterdir()}
        assert {"plan.json", "model.safetensors", "metrics.json", "model.onnx", "README.md",
                MANIFEST} <= names
        assert not [n for n in os.listdir(dest) if n.startswith(".")]  # no temp folders left


def test_exported_model_reproduces_the_trial_checkpoint(searched, exported):
    _, result = searched
    _, res = exported
    by_trial = {p.trial: p for p in result.points}
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    for m in res.models:
        exported_model = cubesearch.load(m["folder"])
        trial_model = load(by_trial[m["trial"]].checkpoint)
        with torch.no_grad():
            assert torch.equal(exported_model(x), trial_model(x))
        for a, b in zip(exported_model.state_dict().values(), trial_model.state_dict().values(),
                        strict=True):
            assert torch.equal(a, b)


def test_metrics_json_and_onnx_agreement(searched, exported):
    _, result = searched
    _, res = exported
    baseline = next(p for p in result.points if p.label == "baseline")
    for m in res.models:
        metrics = json.loads(Path(m["folder"], "metrics.json").read_text())
        for key in ("iou", "f1", "precision", "recall", "oa", "gflops", "params", "trial"):
            assert key in metrics, key
        model = cubesearch.load(m["folder"])
        assert metrics["params"] == sum(p.numel() for p in model.parameters())
        assert metrics["gflops"] == pytest.approx(cubesearch.count_flops(model, (3, 64, 64)) / 1e9)
        assert metrics["baseline_iou"] == pytest.approx(baseline.iou)
        assert metrics["baseline_gflops"] == pytest.approx(baseline.gflops)
        assert metrics["onnx_max_abs_error"] <= 1e-4
        assert metrics["deploy_form"] == "folded" and metrics["fold_max_abs_error"] <= 1e-5
        assert metrics["onnx_opset"] == exporting.ONNX_OPSET
        # the ONNX file on disk (folded) runs at another batch size and agrees with the
        # training form on a new input
        import onnxruntime as ort

        session = ort.InferenceSession(str(Path(m["folder"], "model.onnx")),
                                       providers=["CPUExecutionProvider"])
        x = torch.rand(3, 3, 64, 64)
        (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        with torch.no_grad():
            assert float((torch.from_numpy(got) - model(x)).abs().max()) <= 1e-4
        card = Path(m["folder"], "README.md").read_text()
        assert f"trial {m['trial']}" in card and "cubesearch.load" in card
        assert f"to {metrics['fold_max_abs_error']:.2e} (max abs" in card  # the fold's error
        assert "`model.onnx` holds the folded" in card and "torchscript" not in card  # not written


def test_index_files_list_the_front_and_mark_the_references(searched, exported):
    _, result = searched
    dest, res = exported
    for key in ("csv", "md", "png", "html"):
        assert Path(res.index[key]).stat().st_size > 0
    assert Path(res.index["png"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Path(res.index["csv"]).open() as f:
        rows = list(csv.DictReader(f))
    pareto_trials = sorted(int(r["trial"]) for r in rows if r["pareto"] == "True")
    front = non_dominated([p for p in result.points if p.checkpoint])
    assert pareto_trials == sorted(p.trial for p in front)
    labels = {r["label"] for r in rows}
    assert {"baseline", "fullcube"} <= labels
    base = next(r for r in rows if r["label"] == "baseline")
    assert float(base["iou_gain"]) == 0.0 and float(base["gflops_saving"]) == 0.0
    md = Path(res.index["md"]).read_text()
    assert all(f"| {p.trial} " in md for p in front)
    # the relative budget is shown in GFLOPs too: 100% of the unconverted model
    assert f"Budget: 100% ({float(base['gflops']):.3f} GFLOPs)." in md


@pytest.mark.parametrize("select", ["best-iou", "under:100%", "trial:1"])
def test_each_select_form(searched, tmp_path, select):
    out, result = searched
    res = exporting.export(out, out=tmp_path / "e", select=select, formats=("safetensors",),
                           progress=False)
    trained = [p for p in result.points if p.checkpoint]
    if select == "best-iou":
        expected = max((p for p in trained if p.feasible), key=lambda p: (p.iou, -p.gflops)).trial
    elif select == "under:100%":
        baseline = next(p for p in trained if p.label == "baseline")
        expected = max((p for p in trained if p.gflops <= baseline.gflops),
                       key=lambda p: (p.iou, -p.gflops)).trial
    else:
        expected = 1
    assert [m["trial"] for m in res.models] == [expected]
    assert not Path(res.models[0]["folder"], "model.onnx").exists()  # formats respected


@pytest.mark.parametrize("select, message", [
    ("under:1MFLOPs", r"no trained model at or under 0\.001 GFLOPs \(the cheapest is"),
    ("trial:999", "trial 999 has no trained model to export"),
    ("bestest", "--select 'bestest': use pareto, best-iou, under:30GFLOPs or trial:N"),
    ("under:25ms", "--select 'under:25ms': budget '25ms' is a time, but FLOPs are needed here"),
    ("under:lots", "--select 'under:lots': budget 'lots' is not understood; use FLOPs"),
])
def test_bad_selections_write_nothing(searched, tmp_path, select, message):
    out, _ = searched
    with pytest.raises(CubesearchError, match=message):
        exporting.export(out, out=tmp_path / "e", select=select, progress=False)
    assert not (tmp_path / "e").exists()


def test_bad_sources(tmp_path):
    with pytest.raises(CubesearchError, match="no such study folder"):
        exporting.export(tmp_path / "nothing", out=tmp_path / "e")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CubesearchError, match="holds no study.db"):
        exporting.export(tmp_path / "empty", out=tmp_path / "e")
    with pytest.raises(CubesearchError, match="choose from safetensors, onnx, torchscript"):
        exporting.export(tmp_path / "empty", out=tmp_path / "e", formats=("safetensors", "tflite"))
    with pytest.raises(CubesearchError, match="--opset 13: choose 18 … 23"):
        exporting.export(tmp_path / "empty", out=tmp_path / "e", opset=13)
    assert not (tmp_path / "e").exists()


# --- tamper detection -----------------------------------------------------------------------


@pytest.fixture
def model_copy(exported, tmp_path):
    import shutil

    _, res = exported
    dest = tmp_path / "model"
    shutil.copytree(res.models[0]["folder"], dest)
    return dest


def test_untouched_copy_loads(model_copy):
    cubesearch.load(model_copy)


def test_truncated_weights_are_detected(model_copy):
    weights = model_copy / "model.safetensors"
    size = weights.stat().st_size
    with weights.open("r+b") as f:
        f.truncate(size - 100)
    with pytest.raises(CubesearchError, match=rf"model.safetensors is {size - 100} bytes but {size} "
                                              r"were written \(truncated or altered\)"):
        cubesearch.load(model_copy)


def test_flipped_byte_is_detected(model_copy):
    weights = model_copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF  # same size, one weight changed
    weights.write_bytes(bytes(data))
    with pytest.raises(CubesearchError, match="does not match the SHA-256 recorded"):
        cubesearch.load(model_copy)


def test_edited_plan_is_detected(model_copy):
    plan = model_copy / "plan.json"
    plan.write_text(plan.read_text().replace('"version"', '"version" ', 1))
    with pytest.raises(CubesearchError, match=r"plan.json is \d+ bytes but \d+ were written"):
        cubesearch.load(model_copy)


def test_missing_file_and_bad_manifest_are_detected(model_copy):
    (model_copy / "model.onnx").unlink()
    with pytest.raises(CubesearchError, match=r"model.onnx is missing \(listed in manifest.json\)"):
        cubesearch.load(model_copy)
    (model_copy / MANIFEST).write_text("{not json")
    with pytest.raises(CubesearchError, match="manifest.json is not a valid manifest"):
        cubesearch.load(model_copy)


# --- atomicity ------------------------------------------------------------------------------


def test_interrupted_export_leaves_no_model_folder(searched, tmp_path, monkeypatch):
    out, _ = searched

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # as if the user pressed Ctrl-C while the ONNX file was written

    monkeypatch.setattr(exporting, "onnx_check", crash)
    dest = tmp_path / "e"
    with pytest.raises(KeyboardInterrupt):
        exporting.export(out, out=dest, select="trial:0", progress=False)
    assert not dest.exists()  # nothing half-written, and no empty export folder either
    dest.mkdir()  # an existing folder is kept, and stays as it was
    with pytest.raises(KeyboardInterrupt):
        exporting.export(out, out=dest, select="trial:0", progress=False)
    assert dest.is_dir() and not list(dest.iterdir())


def test_re_export_replaces_a_model_folder_whole(searched, tmp_path):
    out, _ = searched
    dest = tmp_path / "e"
    exporting.export(out, out=dest, select="trial:0", formats=("safetensors", "onnx"), progress=False)
    exporting.export(out, out=dest, select="trial:0", formats=("safetensors",), progress=False)
    folder = dest / "trial_0000"
    assert not (folder / "model.onnx").exists()  # nothing left over from the first export
    cubesearch.load(folder)


def test_cli_export_json_and_errors(searched, tmp_path):
    out, _ = searched
    env = {**os.environ, "CUBESEARCH_NO_PROGRESS": "1"}
    cmd = [sys.executable, "-m", "cubesearch", "export", str(out), "--out", str(tmp_path / "e"),
           "--select", "best-iou", "--formats", "safetensors,torchscript", "--no-fold", "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    payload = json.loads(done.stdout)
    folder = Path(payload["models"][0]["folder"])
    scripted = torch.jit.load(str(folder / "model.torchscript.pt"))
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(scripted(x), cubesearch.load(folder)(x), atol=1e-5)
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["deploy_form"] == "training" and "fold_max_abs_error" not in metrics
    bad = subprocess.run([*cmd[:7], "--select", "trial:999"], capture_output=True, text=True, env=env,
                         timeout=300)
    assert bad.returncode == 1
    lines = [line for line in bad.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: trial 999 has no trained model") and "Traceback" not in bad.stderr


def test_finetune_trains_by_the_final_recipe_beside_the_paired_baseline(searched, tmp_path,
                                                                         monkeypatch):
    import cubesearch.training.finetune as final

    out, result = searched
    runs = []
    monkeypatch.setattr(final, "train", lambda *a, **k: runs.append(k.get("plan")) or train(*a, **k))
    recipe = Recipe(distill_steps=2, patience=None, kd_weight=0.5)
    res = exporting.export(out, out=tmp_path / "e", select="pareto", formats=("safetensors",),
                           finetune_epochs=1, progress=False, recipe=recipe)
    # each model, and the paired baseline once for the whole export (plan None: unconverted)
    assert len(runs) == len(res.models) + 1 and sum(p is None for p in runs) == 1
    paired = json.loads((tmp_path / "e" / "paired.json").read_text())["metrics"]
    assert paired["epochs"] == 1 and paired["kd_weight"] == recipe.kd_weight and "init_source" in paired
    by_trial = {p.trial: p for p in result.points}
    rows = {int(r["trial"]): r for r in csv.DictReader((tmp_path / "e" / "pareto.csv").open())}
    for m in res.models:
        folder = Path(m["folder"])
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["finetune_epochs"] == 1 and metrics["steps"] == 16 // 8  # the search's tiles
        assert metrics["final_iou"] == metrics["iou"] == m["final_iou"]
        assert metrics["proxy_iou"] == by_trial[m["trial"]].iou
        assert metrics["paired_baseline_iou"] == paired["iou"]
        assert metrics["delta_iou_vs_paired"] == pytest.approx(metrics["iou"] - paired["iou"])
        assert metrics["init_source"] == paired["init_source"]  # from the study's baseline
        card = (folder / "README.md").read_text()
        assert "| metric | this model | paired baseline |" in card
        assert (f"{metrics['proxy_iou']:.4f} → final IoU **{metrics['iou']:.4f}**" in card
                and f"final IoU {paired['iou']:.4f}; ΔIoU vs paired" in card)
        assert "distillation from it" in card  # this recipe distils (kd_weight 0.5)
        assert float(rows[m["trial"]]["paired_baseline_iou"]) == pytest.approx(paired["iou"])
        assert float(rows[m["trial"]]["final_iou"]) == pytest.approx(metrics["iou"])
    assert "paired baseline IoU" in (tmp_path / "e" / "pareto.md").read_text()


def test_export_refuses_untrusted_model_code_and_a_file_as_out(searched, tmp_path, monkeypatch):
    import cubesearch.models.trust as trust

    out, _ = searched
    monkeypatch.setenv(trust.STORE_ENV, str(tmp_path / "store.json"))  # another user's machine
    monkeypatch.setattr(trust, "_SEEN", {})
    dest = tmp_path / "e"
    with pytest.raises(CubesearchError, match=r"tiny_seg.py.*--trust-model-code"):
        exporting.export(out, out=dest, select="trial:0", formats=("safetensors",), progress=False)
    assert not dest.exists()  # a failed export leaves no empty folder
    exporting.export(out, out=dest, select="trial:0", formats=("safetensors",), progress=False,
                     trust_code=True)
    assert (dest / "trial_0000" / "model.safetensors").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(CubesearchError, match=r"--out .*file is a file"):
        exporting.export(out, out=tmp_path / "file", select="trial:0", progress=False)


def test_a_moved_study_exports_from_anywhere(searched, tmp_path, monkeypatch):
    import shutil

    out, _ = searched
    moved = tmp_path / "copied" / "search"
    shutil.copytree(out, moved)
    away = out.parent / (out.name + ".away")
    (out / "trials").rename(away)  # the original checkpoints are gone: only the copy has them
    try:
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        monkeypatch.chdir(elsewhere)
        res = exporting.export(moved, out=tmp_path / "e", select="trial:0", formats=("safetensors",),
                               progress=False)
        cubesearch.load(res.models[0]["folder"])
    finally:
        away.rename(out / "trials")


# --- the deploy form: folded blocks in ONNX ------------------------------------------------

DEPLOY_SITES = {  # TinySeg's five 3×3 convs, one block config each
    "encoder.0.0": CubeConfig(),  # s2, router pre
    "encoder.1.0": CubeConfig(lattice_stride=1, groups=1, router="post", act="relu"),
    "encoder.3.0": CubeConfig(lattice_stride=1, groups=4),  # fusion groups 4: one gather stays
    "decoder.0.0": CubeConfig(router="none", depth=2, fusion_kernel=1),  # input gather stays
    "decoder.1.0": CubeConfig(attention=False, groups=2),
}


def _converted_tiny(sites):
    sys.path.insert(0, str(Path(TINY).parent))
    from tiny_seg import build_model

    torch.manual_seed(0)
    model = convert(build_model(), Plan(model=TINY, input_size=(3, 32, 32), sites=sites))
    g = torch.Generator().manual_seed(1)
    for m in model.modules():  # BatchNorm statistics a trained model would have
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g) * 0.5 + 1)
    return model.eval()


def test_folded_onnx_equals_training_form_and_has_the_simplest_graph(tmp_path):
    import onnx
    import onnxruntime as ort

    model = _converted_tiny(DEPLOY_SITES)
    deployed = fold_blocks(model)
    assert not any(isinstance(m, CubeBlock) for m in deployed.modules())
    assert exporting.fold_error(model, deployed, (3, 32, 32)) <= 1e-5
    path = tmp_path / "model.onnx"
    exporting.write_onnx(deployed, path, (3, 32, 32))
    graph = onnx.load(str(path))
    assert graph.opset_import[0].version == exporting.ONNX_OPSET
    ops = Counter(n.op_type for n in graph.graph.node)
    # no pad-then-slice, no stray reshapes; a gather only where a static permutation cannot fold
    # into weights: the input's lattice order without a pre-router (encoder.1.0 'post',
    # decoder.0.0 'none' ×2 units) and stride 1 with fusion groups 4 (encoder.3.0)
    assert not {"Slice", "Pad", "Reshape", "Transpose", "ScatterND", "Identity",
                "Constant"} & set(ops), ops
    assert ops["Gather"] == 4, ops
    # the blocks' BatchNorms are folded; the model's own BN after decoder.0.0 follows the
    # depth-2 block's residual Add, so it cannot fold into a conv
    assert ops["BatchNormalization"] == 1, ops
    assert set(ops) <= {"Conv", "Relu", "Gather", "Erf", "Div", "Mul", "Add", "ReduceMean",
                        "ReduceMax", "Concat", "Sigmoid", "Resize", "MaxPool",
                        "BatchNormalization", "Shape"}, ops  # Shape: the Resize to the input size
    # dynamic batch, and onnxruntime equals the training form
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    (got,) = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        assert float((torch.from_numpy(got) - model(x)).abs().max()) <= 1e-4
    assert exporting.onnx_check(model, path, (3, 32, 32)) <= 1e-4


def test_router_pre_blocks_export_without_any_gather(tmp_path):
    import onnx

    sites = {name: CubeConfig(lattice_stride=s, groups=1) for name, s in
             zip(DEPLOY_SITES, (2, 1, 2, 1, 2), strict=True)}
    path = tmp_path / "model.onnx"
    exporting.write_onnx(fold_blocks(_converted_tiny(sites)), path, (3, 32, 32))
    ops = Counter(n.op_type for n in onnx.load(str(path)).graph.node)
    assert not {"Gather", "Slice", "Pad", "BatchNormalization"} & set(ops), ops


def test_the_final_recipe_table_names_the_epochs_the_models_trained():
    """Not `--finetune`'s 0: a halving search's models trained its top rung's epochs."""
    from cubesearch.cli.export import final_recipe_title

    assert final_recipe_title([{"final_epochs": 9.0}, {"final_epochs": 9.0}]) == "final recipe, 9 epochs"
    assert final_recipe_title([{"finetune_epochs": 1.0}, {"final_epochs": 9}]) == "final recipe, 1/9 epochs"

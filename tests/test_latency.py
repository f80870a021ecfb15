"""Latency as a cost (issue 18): table keying and reuse, the latency model against a
hand-computed table, the CUDA paths (mocked) and the errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cubesearch.blocks import CubeConfig
from cubesearch.core.errors import CubesearchError
from cubesearch.cost.latency import (
    Correction,
    LatencyModel,
    LatencyTable,
    device_fingerprint,
    fit_correction,
    measure,
    model_key,
    profile,
    profile_latency,
)
from cubesearch.cost.latency import fingerprint as fpmod
from cubesearch.cost.latency.fingerprint import Fingerprint, resolve_device, resolve_dtype
from cubesearch.cost.latency.model import _rel_rms, _solve
from cubesearch.cost.latency.table import block_key, conv_key
from cubesearch.plan.space import SearchSpace

TINY = str(Path(__file__).parent / "assets" / "tiny_seg.py")
SMALL_SPACE = {"name": "small", "sites": "all", "mode": "per_site", "min_lattice_q": 1,  # all 5
               "knobs": {"lattice_stride": [2], "groups": [1, 4], "router": ["pre"],
                         "attention": [True], "depth": [1], "fusion_kernel": [3], "act": ["gelu"]}}
A = CubeConfig(groups=1)
B = CubeConfig(groups=4)


def fp(**kw) -> Fingerprint:
    base = dict(device="cpu", name="Test CPU", threads=1, torch="2.x", batch=1, dtype="float32")
    return Fingerprint(**{**base, **kw})


class FakeTimer:
    """Deterministic 'seconds' per call: no real timing in these tests."""

    kind = "fake"

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, fn) -> float:
        self.calls += 1
        return 1e-3


@pytest.fixture
def fake_timer(monkeypatch):
    timer = FakeTimer()
    monkeypatch.setattr(profile, "make_timer", lambda device: timer)
    monkeypatch.setattr(measure, "make_timer", lambda device: timer)
    return timer


@pytest.fixture(scope="module")
def tiny():
    from cubesearch.models.load import load_model
    from cubesearch.plan.sites import find_sites

    model = load_model(TINY)
    return model, find_sites(model, (3, 32, 32), flops=False)


# --- table keying and reuse -------------------------------------------------------------------


def test_table_reused_on_same_fingerprint_remeasured_on_another(tmp_path, tiny, fake_timer):
    model, report = tiny
    space = SearchSpace.from_dict(SMALL_SPACE)
    path = tmp_path / "latency.json"
    table, status = LatencyTable.open(path, fp())
    assert status == "new"
    stats = profile_latency(model, report, space, spec="tiny", table=table,
                            device=torch.device("cpu"), dtype=torch.float32, repeats=1, warmup=0)
    table.save(path)
    # 5 sites (the 1x1 head is not one): a conv and 2 blocks each, all distinct shapes
    assert stats.sites == 5 and stats.configs == 2
    assert stats.ops_measured == stats.ops_needed == 15 and stats.ops_reused == 0
    calls = fake_timer.calls

    again, status = LatencyTable.open(path, fp())
    assert status == "reused" and again.ops == table.ops
    stats2 = profile_latency(model, report, space, spec="tiny", table=again,
                             device=torch.device("cpu"), dtype=torch.float32, repeats=1, warmup=0)
    assert stats2.ops_measured == 0 and stats2.ops_reused == 15
    assert fake_timer.calls == calls  # nothing timed again

    other, status = LatencyTable.open(path, fp(name="Another CPU", threads=2))
    assert status.startswith("re-measuring") and "Another CPU" in status and "threads" in status
    assert other.ops == {} and other.models == {}
    stats3 = profile_latency(model, report, space, spec="tiny", table=other,
                             device=torch.device("cpu"), dtype=torch.float32, repeats=1, warmup=0)
    assert stats3.ops_measured == 15

    _, status = LatencyTable.open(path, fp(), reprofile=True)
    assert status == "re-measuring (--reprofile)"


def test_table_json_round_trip_and_keys(tmp_path):
    t = LatencyTable(fingerprint=fp(), ops={"k": 1.5})
    t.models["m"] = {"layout": "contiguous", "base_us": 10.0, "sites": {}}
    path = t.save(tmp_path / "t.json")
    back = LatencyTable.load(path)
    assert back.fingerprint == t.fingerprint and back.ops == t.ops and back.models == t.models
    assert conv_key("contiguous", 8, 16, 1, 1, False, (32, 32)) == "contiguous|conv|8->16|s1|g1|b0|32x32"
    assert block_key("channels_last", 8, 16, 2, (32, 32), B).startswith("channels_last|block|8->16|s2|32x32|")
    assert model_key("smp:Unet:resnet18", (3, 512, 512)) == "smp:Unet:resnet18|3x512x512|classes=1"


def test_table_from_another_device_is_one_error(tmp_path):
    t = LatencyTable(fingerprint=fp(name="GPU X", device="cuda", threads=0))
    with pytest.raises(CubesearchError, match="another device.*device: 'cuda' → 'cpu'"):
        t.check_device(fp())
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(CubesearchError, match="not a cubesearch latency table"):
        LatencyTable.load(tmp_path / "bad.json")
    with pytest.raises(CubesearchError, match="not found"):
        LatencyTable.load(tmp_path / "missing.json")


# --- the latency model against a hand-computed table ------------------------------------------


def hand_table() -> LatencyTable:
    """Base 1000 µs; site a (8→8, called twice at 16×16 and 8×8), site b (8→16 at 16×16)."""
    t = LatencyTable(fingerprint=fp())
    L = "contiguous"
    t.ops = {
        conv_key(L, 8, 8, 1, 1, False, (16, 16)): 100.0,
        conv_key(L, 8, 8, 1, 1, False, (8, 8)): 30.0,
        conv_key(L, 8, 16, 1, 1, True, (16, 16)): 200.0,
        block_key(L, 8, 8, 1, (16, 16), A): 60.0,
        block_key(L, 8, 8, 1, (8, 8), A): 20.0,
        block_key(L, 8, 8, 1, (16, 16), B): 150.0,
        block_key(L, 8, 8, 1, (8, 8), B): 40.0,
        block_key(L, 8, 16, 1, (16, 16), A): 50.0,
        block_key(L, 8, 16, 1, (16, 16), B): 250.0,
    }
    t.models["m"] = {"layout": L, "base_us": 1000.0, "sites": {
        "a": {"in": 8, "out": 8, "stride": 1, "groups": 1, "bias": False, "calls": [[16, 16], [8, 8]]},
        "b": {"in": 8, "out": 16, "stride": 1, "groups": 1, "bias": True, "calls": [[16, 16]]}}}
    return t


def test_latency_model_matches_hand_computed_sums():
    lat = LatencyModel(hand_table(), "m")
    assert lat.predict_us({}) == 1000.0
    assert lat.conv_us("a") == 130.0 and lat.block_us("a", A) == 80.0
    assert lat.predict_us({"a": A}) == 1000 - 130 + 80
    assert lat.predict_us({"a": B}) == 1000 - 130 + 190
    assert lat.predict_us({"b": A}) == 1000 - 200 + 50
    assert lat.predict_us({"a": A, "b": B}) == 1000 - 130 + 80 - 200 + 250
    assert lat.latency_ms({"a": A, "b": A}) == pytest.approx((1000 - 130 + 80 - 200 + 50) / 1e3)
    # with a correction: base − a·removed + b·added + c·sites
    lat.correction = Correction(a=1.0, b=2.0, c=5.0)
    assert lat.predict_us({"a": A}) == 1000 - 130 + 2 * 80 + 5
    assert lat.raw_us({"a": A}) == 1000 - 130 + 80


def test_fastest_plan_keeps_sites_where_blocks_are_slower():
    lat = LatencyModel(hand_table(), "m")
    space = SearchSpace.from_dict(SMALL_SPACE)

    class S:
        def __init__(self, name, cin, cout):
            self.name, self.in_channels, self.out_channels, self.role = name, cin, cout, "decoder"

    plan = lat.fastest_plan(space, [S("a", 8, 8), S("b", 8, 16)])
    assert plan == {"a": A, "b": A}
    lat.table.ops[block_key("contiguous", 8, 16, 1, (16, 16), A)] = 500.0  # now slower than the conv
    lat2 = LatencyModel(lat.table, "m")
    assert lat2.fastest_plan(space, [S("a", 8, 8), S("b", 8, 16)]) == {"a": A}


def test_missing_op_and_unknown_site_are_clear_errors():
    t = hand_table()
    del t.ops[block_key("contiguous", 8, 16, 1, (16, 16), B)]
    lat = LatencyModel(t, "m")
    with pytest.raises(CubesearchError, match="not in the latency table.*--space"):
        lat.predict_us({"b": B})
    with pytest.raises(CubesearchError, match="was not profiled"):
        lat.predict_us({"zz": A})
    with pytest.raises(CubesearchError, match="no profile of other"):
        LatencyModel(t, "other")


def test_fit_correction_recovers_a_known_law():
    base = 1000.0
    truth = Correction(a=0.8, b=1.3, c=4.0)
    samples = [(r, ad, n, truth.apply(base, r, ad, n))
               for r, ad, n in [(100, 50, 1), (300, 120, 3), (200, 300, 2), (400, 100, 5), (50, 90, 1)]]
    fit = fit_correction(samples, base)
    assert (fit.a, fit.b, fit.c) == pytest.approx((0.8, 1.3, 4.0), rel=1e-6)
    assert fit.n == 5 and fit.rms_pct == pytest.approx(0, abs=1e-6)
    # too few samples to judge a fit on plans it did not see: the plain sum
    two = fit_correction(samples[:2], base)
    assert (two.a, two.b, two.c) == (1.0, 1.0, 0.0)
    # a plain-sum device, one calibration plan an outlier (+30 %): three terms bend to it and
    # beat the plain sum in-sample, but predict the plans they did not see worse, so the plain
    # sum is kept (the selection is by leave-one-out error)
    shapes = [(100, 50, 1), (300, 120, 3), (200, 300, 2), (400, 100, 5), (50, 90, 1), (250, 200, 4)]
    outlier = [(r, ad, n, (base - r + ad) * (1.3 if i == 2 else 1.0))
               for i, (r, ad, n) in enumerate(shapes)]
    in_sample = _solve(outlier, base, 3)
    assert _rel_rms(in_sample, outlier, base) < _rel_rms(Correction(), outlier, base)
    kept = fit_correction(outlier, base)
    assert (kept.a, kept.b, kept.c) == (1.0, 1.0, 0.0) and kept.n == 6
    # implausible scales (load noise, not a law of the device): the plain sum is kept
    wild = [(r, ad, n, base - 10 * r + 10 * ad) for r, ad, n, _ in samples]
    assert (fit_correction(wild, base).a, fit_correction(wild, base).b) == (1.0, 1.0)


# --- device, dtype and the CUDA paths (mocked: CI has no GPU) -----------------------------------


def test_cuda_without_gpu_is_one_error(monkeypatch):
    monkeypatch.setattr(fpmod, "cuda_available", lambda: False)
    with pytest.raises(CubesearchError, match="--device cuda: no CUDA GPU"):
        resolve_device("cuda")
    with pytest.raises(CubesearchError, match="choose cpu or cuda"):
        resolve_device("tpu")
    with pytest.raises(CubesearchError, match="float16 is for --device cuda"):
        resolve_dtype("fp16", torch.device("cpu"))
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16


def test_cuda_fingerprint_and_timer_selection_with_a_mocked_gpu(monkeypatch):
    monkeypatch.setattr(fpmod, "cuda_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA Mock 100")
    dev = resolve_device("cuda")
    assert dev.type == "cuda"
    f = device_fingerprint(dev, batch=4, dtype="bf16")
    assert (f.device, f.name, f.threads, f.batch, f.dtype) == ("cuda", "NVIDIA Mock 100", 0, 4, "bfloat16")
    assert "NVIDIA Mock 100" in f.label()
    with pytest.raises(CubesearchError, match="only 1 CUDA device"):
        resolve_device("cuda:3")

    assert isinstance(measure.make_timer(torch.device("cpu")), measure.CpuTimer)
    timer = measure.make_timer(dev)
    assert isinstance(timer, measure.CudaTimer) and timer.kind == "cuda_events"

    events, syncs = [], []

    class Event:
        def __init__(self, enable_timing=False):
            assert enable_timing
            events.append(self)

        def record(self):
            self.at = len(syncs)

        def elapsed_time(self, end):
            return 2.5  # ms

    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: syncs.append(device))
    seconds = timer(lambda: None)
    assert seconds == pytest.approx(2.5e-3) and len(events) == 2 and len(syncs) == 2


def test_cpu_fingerprint():
    f = device_fingerprint("cpu", threads=1)
    assert f.device == "cpu" and f.threads == 1 and f.name and f.torch == torch.__version__
    assert Fingerprint.from_dict(json.loads(json.dumps(f.to_dict()))) == f
    with pytest.raises(CubesearchError, match="--threads 0"):
        device_fingerprint("cpu", threads=0)


def test_time_interleaved_is_median_of_round_robin():
    order = []
    values = iter([5, 1, 3, 100, 2, 4])  # a: 5, 3, 2 → 3; b: 1, 100, 4 → 4

    def timer(fn):
        fn()
        return next(values)

    out = measure.time_interleaved({"a": lambda: order.append("a"), "b": lambda: order.append("b")},
                                   timer, repeats=3, warmup=1)
    assert out == {"a": 3e6, "b": 4e6}
    assert order == ["a", "b"] * 4  # warm-up round, then alternating


def test_deploy_form_folds_blocks_and_keeps_outputs(tiny):
    from cubesearch.blocks import CubeBlock, FoldedCubeBlock
    from cubesearch.plan.conversion import convert
    from cubesearch.plan.plan import Plan

    model, report = tiny
    plan = Plan(model="tiny", input_size=(3, 32, 32), sites={report.sites[1].name: B})
    converted = convert(model, plan).eval()
    deployed = measure.deploy_form(converted)
    assert not any(isinstance(m, CubeBlock) for m in deployed.modules())
    assert any(isinstance(m, FoldedCubeBlock) for m in deployed.modules())
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(converted(x), deployed(x), atol=1e-4)


# --- the command --------------------------------------------------------------------------------


def test_profile_command_and_its_errors(tmp_path, capsys, monkeypatch):
    from cubesearch.cli import main

    timer = FakeTimer()
    monkeypatch.setattr(profile, "make_timer", lambda device: timer)
    space = tmp_path / "small.yaml"
    import yaml

    space.write_text(yaml.safe_dump(SMALL_SPACE))
    out = tmp_path / "lat.json"
    args = ["profile", TINY, "--input-size", "3x32x32", "--threads", "1", "--space", str(space),
            "-o", str(out), "--repeats", "1", "--warmup", "0", "--calibrate", "2", "--json"]
    assert main(args) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["status"] == "new" and payload["ops_measured"] == 15
    assert payload["fingerprint"]["threads"] == 1 and payload["correction"]["n"] >= 1
    saved = LatencyTable.load(out)
    assert saved.timer == "fake" and len(saved.ops) == 15
    assert main(args) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["status"] == "reused" and payload["ops_measured"] == 0

    monkeypatch.setattr(fpmod, "cuda_available", lambda: False)
    assert main(["profile", TINY, "--device", "cuda", "-o", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: --device cuda: no CUDA GPU") and len(err) == 1
    assert main(["profile", TINY, "--threads", "1", "--dtype", "int8", "-o", str(out)]) == 1
    assert capsys.readouterr().err.strip().startswith("error: --dtype 'int8'")


# --- the search's latency (cubesearch.search.limits, .objectives.latency, .study) ---------------


def settings_stub(tmp_path, **kw):
    from types import SimpleNamespace

    base = dict(model=TINY, input_size=(3, 32, 32), num_classes=1, objectives=("iou", "latency"),
                budget="1000s", out=str(tmp_path), latency_table=None, reprofile=False,
                model_kwargs={}, latency_backend="torch")
    return SimpleNamespace(**{**base, **kw})


def test_search_setup_profiles_once_and_checks_budget_and_device(tmp_path, tiny, fake_timer):
    from cubesearch.cost.pricing import CostModel
    from cubesearch.models.load import load_model
    from cubesearch.plan.sites import find_sites
    from cubesearch.search import limits
    from cubesearch.search.objectives.latency import measure_ms
    from cubesearch.search.study import check_study_device

    model = load_model(TINY)
    report = find_sites(model, (3, 32, 32))
    cost = CostModel(report)
    space = SearchSpace.from_dict(SMALL_SPACE)
    searchable = space.searchable(report.sites)
    logs = []
    lat, budget = limits.setup(settings_stub(tmp_path), model, report, space, searchable, cost,
                                log=logs.append)
    assert budget.objective == "latency" and budget.value == 1e9
    assert (tmp_path / "latency.json").exists() and "profiling" in logs[0]
    assert lat.predict_us({}) == pytest.approx(1000.0)  # the fake timer's 1 ms
    table = LatencyTable.load(tmp_path / "latency.json")  # blocks 10 % faster than their convs
    table.ops = {k: v * 0.9 if "|block|" in k else v for k, v in table.ops.items()}
    table.save(tmp_path / "latency.json")
    calls = fake_timer.calls
    logs.clear()
    limits.setup(settings_stub(tmp_path), model, report, space, searchable, cost, log=logs.append)
    assert fake_timer.calls == calls and not logs  # reused: nothing measured
    # relative budgets: the first cost objective named
    _, b = limits.setup(settings_stub(tmp_path, budget="80%"), model, report, space, searchable, cost)
    assert b.objective == "latency" and b.value == pytest.approx(800.0)
    _, b = limits.setup(settings_stub(tmp_path, budget="80%", objectives=("iou", "gflops", "latency")),
                         model, report, space, searchable, cost)
    assert b.objective == "gflops" and b.value == pytest.approx(0.8 * cost.flops({}))
    # a FLOPs-only study never touches the table
    none, b = limits.setup(settings_stub(tmp_path, budget="90%", objectives=("iou", "gflops"),
                                          latency_table=str(tmp_path / "absent.json")),
                            model, report, space, searchable, cost)
    assert none is None and b.objective == "gflops"

    with pytest.raises(CubesearchError, match="below the fastest plan"):
        limits.setup(settings_stub(tmp_path, budget="0.01ms"), model, report, space, searchable, cost)
    with pytest.raises(CubesearchError, match="latency budget.*no latency"):
        limits.setup(settings_stub(tmp_path, budget="25ms", objectives=("iou", "gflops")), model,
                      report, space, searchable, cost)

    data = json.loads((tmp_path / "latency.json").read_text())
    data["fingerprint"]["name"] = "Some Other CPU"
    (tmp_path / "latency.json").write_text(json.dumps(data))
    with pytest.raises(CubesearchError, match="another device.*--reprofile"):
        limits.setup(settings_stub(tmp_path), model, report, space, searchable, cost)
    lat, _ = limits.setup(settings_stub(tmp_path, reprofile=True), model, report, space, searchable,
                           cost)
    assert LatencyTable.load(tmp_path / "latency.json").fingerprint == lat.fingerprint != fp()

    class Study:
        study_name = "s"

        def __init__(self):
            self.user_attrs = {}

        def set_user_attr(self, k, v):
            self.user_attrs[k] = v

    class Ctx:
        latency, settings = lat, settings_stub(tmp_path)

    study = Study()
    check_study_device(study, Ctx)
    assert study.user_attrs["device"] == lat.fingerprint.to_dict()
    check_study_device(study, Ctx)  # same device: fine
    study.user_attrs["device"] = {**lat.fingerprint.to_dict(), "name": "GPU elsewhere"}
    with pytest.raises(CubesearchError, match="another device.*--reprofile"):
        check_study_device(study, Ctx)
    assert measure_ms(Ctx, model) == pytest.approx(1.0)  # deploy form, fake timer
    lat.fingerprint = fp(name="A CPU elsewhere")  # e.g. a Ray worker on another machine
    with pytest.raises(CubesearchError, match="another device than the latency table"):
        measure_ms(Ctx, model)


# --- a search with a latency objective (timers mocked: an additive fake device) -----------------


class AdditiveTimer:
    """1 ms per 3×3 conv, 0.5 ms per folded Cube block in the timed module: a device where
    latency is exactly additive and blocks are faster than the convs they replace."""

    kind = "additive-fake"

    def __call__(self, fn) -> float:
        from torch import nn

        from cubesearch.blocks import FoldedCubeBlock

        module = next(c.cell_contents for c in fn.__closure__
                      if isinstance(c.cell_contents, nn.Module))
        blocks = [m for m in module.modules() if isinstance(m, FoldedCubeBlock)]
        inside = {id(m) for b in blocks for m in b.modules()}
        convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)
                 and m.kernel_size == (3, 3) and id(m) not in inside]
        return 1e-3 * len(convs) + 0.5e-3 * len(blocks)


@pytest.mark.slow  # trains a baseline and a few trials (~20 s idle, ~40 s on a loaded machine)
def test_search_with_a_latency_objective_and_budget(tmp_path, monkeypatch):
    import optuna

    import cubesearch.search as searching

    timer = AdditiveTimer()
    monkeypatch.setattr(profile, "make_timer", lambda device: timer)
    monkeypatch.setattr(measure, "make_timer", lambda device: timer)
    opts = dict(input_size=(3, 32, 32), tile_size=32, train_tiles=16, val_tiles=8, batch_size=8,
                epochs_per_trial=1.0, progress=False, out=str(tmp_path / "s"), space="shared",
                trials=3, sampler="random", objectives=("iou", "latency"), distill_steps=0,
                strategy="trials")
    with pytest.raises(CubesearchError, match="below the fastest plan"):
        searching.search(TINY, "2ms", **opts)  # 5 convs: at best 5 × 0.5 ms
    result = searching.search(TINY, "4.2ms", **opts)
    assert result.budget_ms == pytest.approx(4.2) and result.budget_gflops is None
    assert result.device["device"] == "cpu"
    study = result.study
    done = [t for t in study.get_trials() if t.state.name == "COMPLETE"]
    for t in done:
        a = t.user_attrs
        n = a["sites_replaced"]
        assert a["latency"] == pytest.approx(5 - 0.5 * n)  # estimate or measured: both exact here
        assert a["feasible"] == (5 - 0.5 * n <= 4.2)
        if a.get("infeasible"):
            assert not a.get("checkpoint")
    assert all("latency" in p.extra for p in result.points)
    assert all(p.extra["latency"] <= 4.2 for p in result.front)
    summary = json.loads((tmp_path / "s" / "search.json").read_text())
    assert summary["budget_ms"] == pytest.approx(4.2) and summary["device"]["name"]
    assert (tmp_path / "s" / "pareto-latency.png").exists()
    assert study.user_attrs["device"] == result.device
    # resuming on another device is refused unless told to re-profile
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 's' / 'study.db'}")
    loaded = optuna.load_study(study_name=study.study_name, storage=storage)
    loaded.set_user_attr("device", {**result.device, "name": "Another CPU"})
    with pytest.raises(CubesearchError, match="another device.*--reprofile"):
        searching.search(TINY, "4.2ms", **opts)
    again = searching.search(TINY, "4.2ms", reprofile=True, **opts)
    assert again.n_complete == result.n_complete  # nothing retrained


# --- backends: what runs the ops (profile --backend, search --latency-backend) -----------------

# the tiny model's 2 decoder sites, one block config: 5 ONNX exports to profile (~1 s each)
ONE_CONFIG = {**SMALL_SPACE, "name": "one", "sites": "decoder",
              "knobs": {**SMALL_SPACE["knobs"], "groups": [4]}}


def test_old_tables_read_as_torch_and_the_backend_is_part_of_the_fingerprint():
    old = {k: v for k, v in fp().to_dict().items() if k not in ("backend", "runtime")}
    assert Fingerprint.from_dict(old) == fp() and fp().backend == "torch"
    ort_fp = fp(backend="ort", runtime="onnxruntime 1.0")
    assert fp().differences(ort_fp) == ["backend: 'torch' → 'ort'",
                                        "runtime: '' → 'onnxruntime 1.0'"]
    assert "backend ort, onnxruntime 1.0" in ort_fp.label()


def test_ort_table_for_the_tiny_model_and_another_backend_refused(tmp_path, tiny):
    """A real ONNX Runtime table (no timing asserted): recorded, reused by a search asking for
    ort, refused by one asking for torch."""
    pytest.importorskip("onnxruntime")
    from cubesearch.cost.latency.profile import profile_model
    from cubesearch.cost.pricing import CostModel
    from cubesearch.search import limits
    from cubesearch.search.objectives.latency import measure_ms

    out = tmp_path / "ort.json"
    _, stats, status = profile_model(TINY, backend="ort", threads=1, input_size="3x32x32",
                                     space=SearchSpace.from_dict(ONE_CONFIG), out=str(out),
                                     calibrate=1, repeats=1, warmup=0)
    assert status == "new" and stats.ops_measured == 4 and stats.layout == "contiguous"
    saved = json.loads(out.read_text())
    assert saved["fingerprint"]["backend"] == "ort"
    assert saved["fingerprint"]["runtime"].startswith("onnxruntime ")
    assert len(saved["ops"]) == 4 and all(v > 0 for v in saved["ops"].values())
    assert all(k.startswith("contiguous|") for k in saved["ops"])
    entry = saved["models"][stats.key]
    assert entry["base_us"] > 0 and list(entry["base_us_by_layout"]) == ["contiguous"]
    assert len(entry["calibration"]) == entry["correction"]["n"] == 1
    # the same file asked for in eager: `profile` re-measures it, a search refuses it
    _, status = LatencyTable.open(out, device_fingerprint("cpu", threads=1))
    assert status.startswith("re-measuring") and "backend: 'ort' → 'torch'" in status

    from cubesearch.plan.sites import find_sites

    model = tiny[0]
    report = find_sites(model, (3, 32, 32))
    space = SearchSpace.from_dict(ONE_CONFIG)
    args = (model, report, space, space.searchable(report.sites), CostModel(report))
    with pytest.raises(CubesearchError, match=r"timed in backend 'ort', not --latency-backend "
                       r"torch.*profile MODEL --backend torch"):
        limits.setup(settings_stub(tmp_path, latency_table=str(out)), *args)
    lat, _ = limits.setup(settings_stub(tmp_path, latency_table=str(out), latency_backend="ort",
                                        threads=1), *args)
    assert lat.fingerprint.backend == "ort"

    class Ctx:
        latency, settings = lat, settings_stub(tmp_path)

    assert measure_ms(Ctx, model) > 0  # the ONNX graph export writes, timed in ONNX Runtime


def test_backend_options_bad_input_is_one_error_line(tmp_path, capsys):
    from cubesearch.cli import main

    for argv, expect in (
            (["profile", TINY, "--backend", "foo", "-o", str(tmp_path / "t.json")],
             "error: --backend 'foo': choose torch or ort"),
            (["profile", TINY, "--backend", "compile", "-o", str(tmp_path / "t.json")],
             "error: --backend 'compile': choose torch or ort (torch.compile builds every op"),
            (["profile", TINY, "--backend", "ort", "--dtype", "bfloat16", "-o",
              str(tmp_path / "t.json")], "error: --backend ort times float32 models"),
            (["search", TINY, "--budget", "90%", "--objectives", "iou,latency",
              "--latency-backend", "foo", "-o", str(tmp_path / "s")],
             "error: --latency-backend 'foo': choose torch or ort")):
        assert main(argv) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(expect), err
    assert not (tmp_path / "t.json").exists() and not (tmp_path / "s").exists()


def test_card_states_measured_latency_beside_predicted():
    from cubesearch.exporting.export import model_card
    from cubesearch.plan.plan import Plan
    from cubesearch.search.pareto import ParetoPoint

    plan = Plan(model="tiny", input_size=(3, 32, 32), sites={"decoder.0.0": B})
    metrics = {"iou": 0.5, "gflops": 0.01, "params": 100, "latency": 1.25,
               "latency_predicted": 1.5, "latency_backend": "ort"}
    card = model_card(ParetoPoint(trial=3, iou=0.5, gflops=0.01, params=100), plan, metrics, ())
    assert "| latency, ms (measured, deploy form, ort, on the profiled device) | 1.25 |" in card
    assert "| latency, ms (predicted by the latency table) | 1.50 |" in card

"""The site map: cells measured alone in the baseline, the MILP's plans, resume, errors."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pytest

from cubesearch.core.errors import CubesearchError
from cubesearch.cost.pricing import count_flops, count_params, plan_flops_params
from cubesearch.models.load import load_model
from cubesearch.plan.checkpoint import load
from cubesearch.plan.conversion import convert
from cubesearch.plan.plan import Plan
from cubesearch.plan.space import SearchSpace
from cubesearch.search.sitemap import MapTable, choose, predicted_front, resolve_limits, site_map, sweep
from cubesearch.search.sitemap.options import resolve_subset, site_options
from cubesearch.search.sitemap.plans import plan_parts

ASSETS = Path(__file__).parent / "assets"
TINY = str(ASSETS / "tiny_seg.py")
SPACE = str(ASSETS / "map_space.yaml")
TINY_OPTIONS = dict(input_size=(3, 64, 64), tile_size=32, train_tiles=32, val_tiles=8, batch_size=8,
                    baseline_epochs=4, distill_steps=3, progress=False)


# --- the MILP against brute force ---------------------------------------------------------------


def random_table(rng: random.Random, sites: int = 5, options: int = 3) -> MapTable:
    cells = []
    for s in range(sites):
        cells.append({"site": f"s{s}", "option": "keep", "delta_iou": 0.0, "delta_gflops": 0.0,
                      "delta_params": 0, "delta_ms": 0.0})
        for o in range(1, options):
            cells.append({"site": f"s{s}", "option": f"o{o}", "delta_iou": rng.uniform(-0.05, 0.02),
                          "delta_gflops": rng.uniform(-1.0, 0.3), "delta_params": rng.randint(-900, 200),
                          "delta_ms": rng.uniform(-0.5, 0.2)})
    return MapTable(cells, 0.5, {"gflops": 5.0, "params": 3000, "latency": 2.0})


def brute_force(table: MapTable, limits: dict[str, float]) -> float | None:
    """The best predicted IoU over every plan (3^5 = 243 of them) within `limits`."""
    per_site = [[c for c in table.cells if c["site"] == s] for s in table.sites]
    best = None
    keys = {"gflops": "delta_gflops", "params": "delta_params", "latency": "delta_ms"}
    for combo in itertools.product(*per_site):
        if all(table.base[k] + sum(c[keys[k]] for c in combo) <= v for k, v in limits.items()):
            iou = table.baseline_iou + sum(c["delta_iou"] for c in combo)
            best = iou if best is None else max(best, iou)
    return best


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_milp_matches_brute_force(seed):
    rng = random.Random(seed)
    table = random_table(rng)
    for limits in ({"gflops": 4.0}, {"gflops": 3.0}, {"gflops": 2.2, "params": 1500},
                   {"gflops": 3.5, "latency": 1.4}, {"gflops": 9.0}, {"params": 1000, "latency": 1.2}):
        want = brute_force(table, limits)
        got = table.solve(limits)
        if want is None:
            assert got is None
            continue
        assert got is not None
        assert got.predicted_iou == pytest.approx(want, abs=1e-9)
        for cost, bound in limits.items():
            assert got.costs[cost] <= bound + 1e-9
        assert len(got.options) == len(table.sites)  # exactly one option per site


def test_no_plan_meets_a_budget_below_the_cheapest():
    table = random_table(random.Random(3))
    low = table.lowest("gflops")
    assert table.solve({"gflops": low - 0.01}) is None
    assert table.solve({"gflops": low + 1e-6}) is not None
    with pytest.raises(CubesearchError, match="no plan of the map meets the budget: gflops"):
        predicted_front(table, [f"{(low - 0.1) * 1e9:.0f}"])


def test_choose_tightens_until_the_exact_cost_fits():
    """An exact cost above the sum (as narrowed convs that meet can give) is re-checked: the
    budget is tightened by the excess until the chosen plan's exact cost fits."""
    table = random_table(random.Random(4))

    def exact(options):  # each changed site costs 0.2 GFLOPs more than its cell says
        predicted = table.predict(options)
        return {"gflops": predicted.costs["gflops"] + 0.2 * sum(o != "keep" for o in options.values())}

    choice = choose(table, {"gflops": 3.5}, exact)
    assert choice is not None and choice.costs["gflops"] <= 3.5
    assert choice.costs["gflops"] == pytest.approx(exact(choice.options)["gflops"])


def test_sweep_is_a_front():
    table = random_table(random.Random(5))
    front = sweep(table, "gflops", table.base["gflops"], points=25)
    costs = [c.costs["gflops"] for c in front]
    ious = [c.predicted_iou for c in front]
    assert costs == sorted(costs) and ious == sorted(ious) and len(set(ious)) == len(ious)
    for c in front:  # each is the MILP's optimum at its own cost
        assert c.predicted_iou == pytest.approx(brute_force(table, {"gflops": c.costs["gflops"]}))


def test_budget_forms():
    table = random_table(random.Random(6))
    assert resolve_limits(["60%"], table) == {"gflops": pytest.approx(3.0)}
    assert resolve_limits(["2.5G", "params:80%", "1.5ms"], table) == {
        "gflops": pytest.approx(2.5), "params": pytest.approx(2400), "latency": pytest.approx(1.5)}
    no_latency = MapTable(table.cells, 0.5, {"gflops": 5.0, "params": 3000, "latency": None})
    with pytest.raises(CubesearchError, match="latency-table"):
        resolve_limits(["25ms"], no_latency)
    with pytest.raises(CubesearchError, match="unknown cost 'memory'"):
        resolve_limits(["memory:50%"], table)


# --- options ------------------------------------------------------------------------------------


def test_one_knob_subset_of_a_large_space():
    space = SearchSpace.load("default")
    site = type("S", (), {"name": "x", "in_channels": 16, "out_channels": 16, "role": "decoder"})()
    assert resolve_subset(space, [site]) == "one-knob"  # 144 configs per site
    options = site_options(space, site, "one-knob")
    default = space.default_config()
    assert options[0].name == "keep" and options[1].config == default
    for o in options[2:]:  # each differs from the default in exactly one knob
        diff = [k for k, v in o.config.to_dict().items() if v != default.to_dict()[k]]
        assert diff and len(diff) == 1 and o.change.startswith(diff[0] + "=")
    # 1 + (stride 1, groups 1 & 2, router post & none, attention off, depth 2, kernel 1)
    assert len(options) == 1 + 1 + 8
    small = SearchSpace.load(SPACE)
    assert resolve_subset(small, [site]) == "all"
    assert [o.name for o in site_options(small, site, "all")][0] == "keep"


# --- the cells ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_map(tmp_path_factory):
    """The tiny model's decoder sites: keep and 2 configs each, and width 0.5 at decoder.0.0 (16
    output channels; decoder.1.0 has 8, nothing to remove): 7 cells, 3 distillation steps."""
    out = tmp_path_factory.mktemp("map")
    space = out / "decoder.yaml"
    space.write_text(Path(SPACE).read_text().replace("sites: all", "sites: decoder") + "widths: [0.5]\n")
    result = site_map(TINY, out=str(out), space=str(space), budgets=["90%"], **TINY_OPTIONS)
    return out, result


def test_cells_measure_the_option_alone(tiny_map):
    out, result = tiny_map
    data = json.loads((out / "map.json").read_text())
    assert data["cells"] == result.cells and result.measured == 7
    assert [s["name"] for s in data["sites"]] == ["decoder.0.0", "decoder.1.0"]  # data-flow order
    assert "every Cube config" in data["subset_rule"] and "width 0.5" in data["subset_rule"]
    assert [c["option"] for c in data["cells"]] == [
        "keep", "s1 g4 pre att d1 k3 gelu", "s2 g4 pre att d1 k3 gelu", "width=0.5",
        "keep", "s1 g4 pre att d1 k3 gelu", "s2 g4 pre att d1 k3 gelu"]
    baseline = load(data["baseline"])
    from cubesearch.search.context import build_context  # the search's own objects
    from cubesearch.search.settings import SearchSettings

    ctx = build_context(SearchSettings(model=TINY, budget="100%", space=str(out / "decoder.yaml"),
                                       input_size=(3, 64, 64), strategy="map"))
    for cell in data["cells"]:
        if cell["option"] == "keep":
            assert cell["delta_iou"] == 0.0 and cell["iou"] == data["baseline_iou"]
            assert cell["delta_gflops"] == 0.0 and cell["delta_params"] == 0
            continue
        if cell["kind"] == "width":  # counted on the built model; nothing distilled
            plan = Plan(model=TINY, input_size=(3, 64, 64), widths={cell["site"]: cell["width"]})
            flops, params = plan_flops_params(load_model(TINY).eval(), plan)
            assert cell["delta_gflops"] == (flops - count_flops(baseline, (3, 64, 64))) / 1e9
            assert cell["delta_params"] == params - count_params(baseline) < 0
            assert cell["distill_loss"] is None and cell["delta_ms"] is None
            continue
        cfg_flops, cfg_params = ctx.cost.site_delta(cell["site"], _config(cell))
        assert cell["delta_gflops"] == cfg_flops / 1e9 and cell["delta_params"] == cfg_params
        assert cell["delta_iou"] == pytest.approx(cell["iou"] - data["baseline_iou"], abs=1e-12)
        assert cell["distill_loss"] is not None and cell["distill_loss"] >= 0
        # the exact Δ: fvcore's count of the model with that one block in it
        plan = Plan(model=TINY, input_size=(3, 64, 64), sites={cell["site"]: _config(cell)})
        built = convert(load_model(TINY), plan).eval()
        assert count_flops(built, (3, 64, 64)) - count_flops(baseline, (3, 64, 64)) == cfg_flops
        assert count_params(built) - count_params(baseline) == cfg_params
    assert (out / "map.png").stat().st_size > 10_000


def _config(cell):
    from cubesearch.blocks import CubeConfig

    return CubeConfig.from_dict(cell["config"])


def test_a_cell_is_reproducible(tiny_map):
    """Measuring a cell again (same seed, same batches) gives the same IoU: the map's
    differences are the options', not the sampling's."""
    out, result = tiny_map
    from cubesearch.search.context import build_context, ensure_baseline, ensure_datasets
    from cubesearch.search.settings import SearchSettings
    from cubesearch.search.sitemap.cells import CellJob, baseline_iou, measure_cell
    from cubesearch.search.sitemap.options import cube_option

    settings = SearchSettings(model=TINY, budget="100%", strategy="map", out=str(out),
                              space=str(out / "decoder.yaml"),
                              **{k: v for k, v in TINY_OPTIONS.items() if k != "progress"})
    ctx = build_context(settings)
    ensure_datasets(ctx)
    ensure_baseline(ctx, progress=False)
    cell = next(c for c in result.cells if c["option"] != "keep")
    again = measure_cell(ctx, CellJob(cell["site"], cube_option(_config(cell))), baseline_iou(ctx))
    assert again["iou"] == pytest.approx(cell["iou"], abs=1e-9)
    assert baseline_iou(ctx) == result.data["baseline_iou"]


def test_chosen_plans_respect_the_budget_on_the_built_model(tiny_map):
    out, result = tiny_map
    table = result.table
    base = count_flops(load_model(TINY).eval(), (3, 64, 64))
    assert table.base["gflops"] == base / 1e9
    for share in (0.97, 0.985, 1.0):
        limits = resolve_limits([f"{share * 100:g}%"], table)
        choice = choose(table, limits)
        if choice is None:
            assert table.lowest("gflops") > limits["gflops"]
            continue
        sites, widths = plan_parts(result.data, choice.options)
        built = convert(load_model(TINY), Plan(model=TINY, input_size=(3, 64, 64), sites=sites,
                                               widths=widths)).eval()
        exact = count_flops(built, (3, 64, 64)) / 1e9
        if not widths:  # Cube-only: the cells' Δs add up exactly
            assert exact == pytest.approx(choice.costs["gflops"], rel=1e-12)
        assert exact <= limits["gflops"] * (1 + 1e-12)
    assert result.front and all(c.costs["gflops"] <= 0.9 * table.base["gflops"] + 1e-12
                                for c in result.front)


def test_a_second_run_measures_nothing(tiny_map):
    out, result = tiny_map
    again = site_map(TINY, out=str(out), space=str(out / "decoder.yaml"), **TINY_OPTIONS)
    assert again.measured == 0 and again.cells == [{**c} for c in result.cells]
    assert again.data["runs"] == 2 and {c["run"] for c in again.cells} == {1}


def test_a_run_with_other_settings_is_refused(tiny_map):
    out, _ = tiny_map
    with pytest.raises(CubesearchError, match="measured with other settings.*distill_steps: 3 → 4"):
        site_map(TINY, out=str(out), space=str(out / "decoder.yaml"),
                 **{**TINY_OPTIONS, "distill_steps": 4})


def test_a_shared_space_is_refused(tmp_path):
    with pytest.raises(CubesearchError, match="--space shared: the site map .* --strategy map needs a "
                                              "per-site space"):
        site_map(TINY, out=str(tmp_path / "m"), space="shared", **TINY_OPTIONS)
    assert not (tmp_path / "m").exists()  # refused before any work


# --- resume after kill -9, and Ray ----------------------------------------------------------------


def _map_process(out: Path, **extra) -> list[str]:
    options = {**TINY_OPTIONS, "distill_steps": 20, **extra}
    code = (f"from cubesearch.search.sitemap import site_map; site_map({TINY!r}, out={str(out)!r}, "
            f"space={SPACE!r}, **{options!r})")
    import sys

    return [sys.executable, "-c", code]


@pytest.mark.slow
def test_resume_after_kill_9_redoes_no_cell(tmp_path):
    import os
    import signal
    import subprocess
    import time

    out = tmp_path / "map"
    proc = subprocess.Popen(_map_process(out), env={**os.environ, "OMP_NUM_THREADS": "1"})
    file, done = out / "map.json", []
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        try:
            done = json.loads(file.read_text())["cells"]
        except (OSError, ValueError):
            done = []
        if sum(c["option"] != "keep" for c in done) >= 2:
            break
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = json.loads(file.read_text())["cells"]
    measured = [c for c in done if c["option"] != "keep"]
    assert measured, "the map was killed before its first cell"
    result = site_map(TINY, out=str(out), space=SPACE, **{**TINY_OPTIONS, "distill_steps": 20})
    assert len(result.cells) == 15 and result.measured == 15 - len(done)
    kept = {(c["site"], c["option"]): c for c in result.cells}
    for c in done:  # the first run's cells, as they were: not measured again
        assert kept[(c["site"], c["option"])] == c and c["run"] == 1
    assert {c["run"] for c in result.cells} == {1, 2} and result.data["runs"] == 2


@pytest.mark.slow
def test_map_on_ray_matches_local(tiny_map, tmp_path):
    """Cells as Ray tasks on a local Ray instance: the same values as measured here."""
    pytest.importorskip("ray")
    out, local = tiny_map
    ray_out = tmp_path / "ray"
    ray_out.mkdir()
    (ray_out / "decoder.yaml").write_text((out / "decoder.yaml").read_text())
    import shutil

    shutil.copytree(out / "baselines", ray_out / "baselines")  # the same trained baseline
    result = site_map(TINY, out=str(ray_out), space=str(ray_out / "decoder.yaml"), backend="ray",
                      max_concurrent=2, **TINY_OPTIONS)
    assert result.measured == 7 and result.data["baseline_iou"] == local.data["baseline_iou"]
    mine = {(c["site"], c["option"]): c for c in local.cells}
    for c in result.cells:
        here = mine[(c["site"], c["option"])]
        assert (c["delta_gflops"], c["delta_params"]) == (here["delta_gflops"], here["delta_params"])
        # a worker runs 1 thread, this process 2: Adam's first steps amplify the float noise
        if here["kind"] == "width":  # nothing distilled: the same model, up to float noise
            assert c["distill_loss"] is None and c["iou"] == pytest.approx(here["iou"], abs=1e-3)
            continue
        assert c["distill_loss"] == pytest.approx(here["distill_loss"], rel=0.05)
        assert c["iou"] == pytest.approx(here["iou"], abs=0.03)


# --- search --strategy map ----------------------------------------------------------------------


@pytest.mark.slow
def test_search_strategy_map_trains_the_milps_finalists(tiny_map, tmp_path):
    """The finalists are the MILP's plans (stored with the study), trained with the references
    by the final recipe; a second run measures no cell and trains no plan again."""
    from cubesearch.search import search
    from cubesearch.search.sitemap.strategy import FINALISTS_ATTR

    out = tmp_path / "search"
    out.mkdir()
    map_out, _ = tiny_map
    (out / "decoder.yaml").write_text((map_out / "decoder.yaml").read_text())
    import shutil

    shutil.copytree(map_out / "baselines", out / "baselines")  # the map's baseline, reused
    options = {**TINY_OPTIONS, "space": str(out / "decoder.yaml"), "strategy": "map", "trials": 2,
               "rungs": (1.0,)}
    result = search(TINY, "99%", out=str(out), **options)
    finalists = result.study.user_attrs[FINALISTS_ATTR]
    assert 1 <= len(finalists) <= 2 and (out / "map.json").is_file()
    trained = [p for p in result.points if not p.label]
    assert len(trained) == len(finalists)
    assert {p.label for p in result.points} == {"", "baseline", "fullcube", "pruning"}
    for pruned in (p for p in result.points if p.label == "pruning"):  # decoder.0.0 at one width
        plan = json.loads(Path(pruned.plan_path).read_text())
        assert plan["widths"] == {"decoder.0.0": pruned.extra["pruning_ratio"]} and not plan["sites"]
        assert (pruned.sites_replaced, pruned.sites_narrowed) == (0, 1)  # the front's "sites" column
        assert pruned.gflops <= max(f["gflops"] for f in finalists) + 1e-12
        assert pruned not in result.front
    table = json.loads((out / "map.json").read_text())
    for point in trained:  # each a finalist: its plan, its prediction
        plan = json.loads(Path(point.plan_path).read_text())
        f = next(f for f in finalists
                 if f["sites"] == plan["sites"] and f["widths"] == plan.get("widths", {}))
        assert point.extra["predicted_iou"] == f["predicted_iou"]
        assert (point.sites_replaced, point.sites_narrowed) == (len(plan["sites"]), len(f["widths"]))
        deltas = {(c["site"], c["option"]): c["delta_iou"] for c in table["cells"]}
        assert f["predicted_iou"] == pytest.approx(
            table["baseline_iou"] + sum(deltas[(s, o)] for s, o in f["options"].items()))
        assert point.gflops <= 0.99 * table["base_gflops"] + 1e-12  # fvcore, the trained model
    again = search(TINY, "99%", out=str(out), **options)
    assert len(again.study.trials) == len(result.study.trials)
    assert json.loads((out / "map.json").read_text())["runs"] == 2


def test_budget_errors_come_before_any_work(tmp_path):
    """A budget no plan meets, or a latency budget without a profile table: one error, nothing
    trained or written."""
    out = tmp_path / "m"
    with pytest.raises(CubesearchError, match=r"no plan of the map meets the budget: gflops ≤ "):
        site_map(TINY, out=str(out), space=SPACE, budgets=["1%"], **TINY_OPTIONS)
    with pytest.raises(CubesearchError, match=r"budget '5ms' bounds latency, which the map did not "
                                              r"measure \(give --latency-table FILE"):
        site_map(TINY, out=str(out), space=SPACE, budgets=["5ms"], **TINY_OPTIONS)
    assert not out.exists()


# --- the command line -----------------------------------------------------------------------------

CLI_OPTIONS = ["--input-size", "3x64x64", "--tile-size", "32", "--train-tiles", "32", "--val-tiles",
               "8", "--batch-size", "8", "--baseline-epochs", "4", "--distill-steps", "3"]


def test_map_command_reuses_the_map_and_prints_the_front(tiny_map, capsys):
    from cubesearch.cli import main

    out, result = tiny_map
    code = main(["map", TINY, "-o", str(out), "--space", str(out / "decoder.yaml"), "--budget", "90%",
                 "--json", *CLI_OPTIONS])
    printed = json.loads(capsys.readouterr().out)
    assert code == 0 and printed["measured"] == 0
    assert printed["cells"] == [{**c} for c in result.cells]
    assert printed["predicted_front"] and all(
        p["gflops"] <= 0.9 * result.data["base_gflops"] + 1e-12 for p in printed["predicted_front"])
    assert main(["map", TINY, "-o", str(out), "--space", str(out / "decoder.yaml"), *CLI_OPTIONS]) == 0
    shown = capsys.readouterr().out
    assert "Where a block pays" in shown and "decoder.0.0" in shown and "map.png" in shown


@pytest.mark.parametrize("args, line", [
    (["--space", "shared"], "error: --space shared: the site map scores and chooses each site on "
                            "its own, so --strategy map needs a per-site space"),
    (["--space", SPACE, "--budget", "1%"], "error: no plan of the map meets the budget: gflops ≤ "),
    (["--space", SPACE, "--budget", "5ms"], "error: budget '5ms' bounds latency, which the map did not "
                                             "measure (give --latency-table FILE"),
])
def test_map_command_errors_are_one_line(tmp_path, capsys, args, line):
    from cubesearch.cli import main

    assert main(["map", TINY, "-o", str(tmp_path / "m"), *args, *CLI_OPTIONS]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(line)
    assert not (tmp_path / "m").exists()


def test_search_strategy_map_refuses_a_shared_space(tmp_path, capsys):
    from cubesearch.cli import main

    assert main(["search", TINY, "--budget", "90%", "--strategy", "map", "--space", "shared",
                 "-o", str(tmp_path / "s"), *CLI_OPTIONS]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [next(e for e in err if e.startswith("error: --space shared: the site map"))]
    assert not (tmp_path / "s").exists()


def test_a_narrower_run_keeps_the_other_cells(tmp_path):
    """A map run over fewer sites (another space) writes its cells first and keeps the rest."""
    from cubesearch.search.sitemap.store import MapStore

    header = {"identity": {"baseline": "m-123", "seed": 0}}
    store = MapStore.open(tmp_path, header)
    for site in ("a", "b"):
        store.add({"site": site, "option": "keep", "delta_iou": 0.0})
    again = MapStore.open(tmp_path, header)
    again.write([("b", "keep")])
    data = json.loads((tmp_path / "map.json").read_text())
    assert [c["site"] for c in data["cells"]] == ["b", "a"] and data["runs"] == 2
    with pytest.raises(CubesearchError, match=r"other settings \(seed: 0 → 1\)"):
        MapStore.open(tmp_path, {"identity": {"baseline": "m-123", "seed": 1}})


@pytest.mark.slow
def test_search_strategy_map_on_ray(tmp_path):
    """Cells as Ray tasks and finalists as Ray Tune trials: a narrowed finalist reaches its worker
    with its widths (its trained model is counted narrowed)."""
    pytest.importorskip("ray")
    from cubesearch.search import search

    space = tmp_path / "joint.yaml"
    space.write_text(Path(SPACE).read_text() + "widths: [0.5]\n")
    result = search(TINY, "97%", out=str(tmp_path / "s"), space=str(space), strategy="map",
                    trials=2, rungs=(1.0,), backend="ray", max_concurrent=2, **TINY_OPTIONS)
    finalists = result.study.user_attrs["map_finalists"]
    assert json.loads((tmp_path / "s" / "map.json").read_text())["cells"]
    for point in (p for p in result.points if not p.label or p.label == "pruning"):
        plan = json.loads(Path(point.plan_path).read_text())
        if plan.get("widths"):
            assert point.gflops < result.baseline.gflops  # built narrowed on the worker
    assert any(f["widths"] for f in finalists) or any(p.label == "pruning" for p in result.points)


def test_a_budget_only_narrowed_convs_meet_is_accepted_by_the_map_strategy(tmp_path):
    """Under --strategy map a budget below the cheapest Cube plan is searched when narrowing every
    conv to its narrowest width meets it; below both, one error line gives both figures."""
    from cubesearch.search.context import build_context, cheapest_plan
    from cubesearch.search.settings import SearchSettings

    space = tmp_path / "joint.yaml"
    space.write_text(Path(SPACE).read_text().replace("lattice_stride: [1, 2]", "lattice_stride: [1]")
                     + "widths: [0.25]\n")  # stride-1 blocks only: narrowing is the cheaper way

    def settings(budget: str) -> SearchSettings:
        return SearchSettings(model=TINY, budget=budget, strategy="map", space=str(space),
                              out=str(tmp_path / "s"), input_size=(3, 64, 64))

    ctx = build_context(settings("100%"))
    cube = ctx.cost.flops(cheapest_plan(ctx.space, ctx.searchable, ctx.cost))
    narrow = {s.name: 0.25 for s in ctx.searchable if ctx.space.site_widths(s)}
    narrowest = plan_flops_params(load_model(TINY), Plan(model=TINY, input_size=(3, 64, 64),
                                                         widths=narrow))[0]
    assert narrowest < cube  # the case: only narrowing reaches below the cheapest Cube plan
    between = (narrowest + cube) / 2
    assert build_context(settings(f"{between / 1e6:.6f}MFLOPs")).budget_flops < cube
    with pytest.raises(CubesearchError, match=r"below the cheapest plan in space 'map-test': "
                       r"[0-9.]+ GFLOPs, [0-9.]+ GFLOPs with every conv at its narrowest width"):
        build_context(settings(f"{narrowest * 0.5 / 1e6:.6f}MFLOPs"))

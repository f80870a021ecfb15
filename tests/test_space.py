"""Search spaces: the shipped ones (package data), YAML + schema, sampling."""

from __future__ import annotations

from dataclasses import dataclass

import optuna
import pytest

from cubesearch import CubeConfig
from cubesearch.core.errors import CubesearchError
from cubesearch.plan.space import SPACES_DIR, SearchSpace, shipped_space_text, shipped_spaces


@dataclass
class FakeSite:
    name: str
    in_channels: int
    role: str
    out_channels: int = 64
    prediction: bool = False


SITES = [FakeSite("encoder.layer1.0.conv1", 64, "encoder"),
         FakeSite("decoder.blocks.0.conv1", 96, "decoder"),
         FakeSite("decoder.blocks.1.conv2", 30, "decoder")]


def test_shipped_spaces_load_and_differ():
    names = shipped_spaces()
    assert {"default", "shared", "fullcube", "paper"} <= set(names)
    assert names == sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))
    assert SPACES_DIR.parent.parent.name == "cubesearch"  # in the package (plan/): a wheel carries them
    paper = SearchSpace.load("paper")
    assert paper.knobs.router == ["none", "pre", "post"] and paper.knobs.depth == [1, 4]
    assert SearchSpace.load("fullcube").mode == "fullcube"
    assert SearchSpace.load("shared").mode == "shared"
    assert SearchSpace.load("default").mode == "per_site"


@pytest.mark.parametrize("data, message", [
    ({"knobs": {"lattice_stride": [3]}}, r"knobs: CubeConfig.lattice_stride: Input should be 1 or 2"),
    ({"knobs": {"kernel": [3]}}, r"knobs.kernel: unknown key"),
    ({"mode": "greedy"}, r"mode: Input should be 'per_site', 'shared' or 'fullcube'"),
    ({"sites": {"include": ["("]}}, r"bad regex"),
    ({"knobs": {"router": []}}, r"router: needs at least one value"),
    ({"colour": "red"}, r"colour: unknown key")])
def test_space_validation_errors(data, message):
    with pytest.raises(CubesearchError, match=message):
        SearchSpace.from_dict(data, source="s.yaml")


def test_space_file_errors(tmp_path):
    with pytest.raises(CubesearchError, match="unknown search space 'nope'.*shipped: default"):
        SearchSpace.load("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("knobs: [1, 2\n")
    with pytest.raises(CubesearchError, match="not valid YAML"):
        SearchSpace.load(bad)
    with pytest.raises(CubesearchError, match="not found"):
        SearchSpace.load(tmp_path / "missing.yaml")


def test_users_copy_of_a_shipped_space_loads_by_path(tmp_path, monkeypatch):
    mine = tmp_path / "mine.yaml"
    mine.write_text(shipped_space_text("paper").replace("depth: [1, 4]", "depth: [2]"))
    monkeypatch.chdir(tmp_path)
    space = SearchSpace.load("mine.yaml")
    assert space.knobs.depth == [2] and space.knobs.router == ["none", "pre", "post"]


def test_searchable_sites_by_role_and_regex():
    assert [s.name for s in SearchSpace(sites="decoder").searchable(SITES)] == [
        "decoder.blocks.0.conv1", "decoder.blocks.1.conv2"]
    assert [s.name for s in SearchSpace(sites="encoder").searchable(SITES)] == ["encoder.layer1.0.conv1"]
    space = SearchSpace.from_dict({"sites": {"include": ["conv1$"], "exclude": ["^encoder"]}})
    assert [s.name for s in space.searchable(SITES)] == ["decoder.blocks.0.conv1"]


def test_the_conv_computing_the_logits_is_searchable_only_when_asked():
    logits = FakeSite("segmentation_head.0", 16, "decoder", out_channels=1, prediction=True)
    sites = [*SITES, logits]
    for name in ("default", "shared", "fullcube", "paper"):
        assert logits not in SearchSpace.load(name).searchable(sites)
    for flt in ("all", "decoder", {"include": ["head"]}):
        assert logits in SearchSpace.from_dict({"sites": flt, "prediction_conv": True}).searchable(sites)
        assert logits not in SearchSpace.from_dict({"sites": flt}).searchable(sites)
    with pytest.raises(CubesearchError, match="prediction_conv: Input should be a valid boolean"):
        SearchSpace.from_dict({"prediction_conv": "sometimes"})


@pytest.mark.parametrize("name", ["default", "shared", "fullcube", "paper"])
def test_sample_plan_and_enqueue_round_trip(name):
    """Every sampled plan uses allowed values; `params_for` reproduces a given plan exactly."""
    space = SearchSpace.load(name)
    sites = space.searchable(SITES) or SITES
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        trial = study.ask()
        plan = space.sample_plan(trial, sites)
        for site_name, cfg in plan.items():
            site = next(s for s in sites if s.name == site_name)
            assert cfg in space.site_combos(site)
            if site.in_channels % 4:
                assert cfg.router != "none"
        if space.mode == "fullcube":
            assert set(plan) == {s.name for s in sites}
        if space.mode != "per_site":
            assert len(set(plan.values())) <= 1
        study.tell(trial, 0.0)
    target = {s.name: space.default_config() for s in sites}
    study.enqueue_trial(space.params_for(target, sites))
    trial = study.ask()
    assert space.sample_plan(trial, sites) == target
    if space.mode != "fullcube":
        study.enqueue_trial(space.params_for({}, sites))
        assert space.sample_plan(study.ask(), sites) == {}


def test_default_config_is_paper_block_when_allowed():
    assert SearchSpace.load("default").default_config() == CubeConfig()
    assert SearchSpace.load("paper").default_config().router == "pre"


def test_router_none_is_never_offered_where_the_block_cannot_take_it():
    from cubesearch.blocks import CubeBlock

    head = FakeSite("segmentation_head.0", 16, "decoder", out_channels=1)  # C_out % 4 != 0
    stacked = SearchSpace.from_dict({"mode": "per_site", "sites": "all",
                                     "knobs": {"router": ["none", "pre"], "depth": [1, 2]}})
    single = SearchSpace.from_dict({"mode": "per_site", "sites": "all",
                                    "knobs": {"router": ["none", "pre"], "depth": [1]}})
    assert stacked.no_router_none(head) and not single.no_router_none(head)
    assert {c.router for c in stacked.site_combos(head)} == {"pre"}
    assert {c.router for c in single.site_combos(head)} == {"none", "pre"}
    for cfg in [*stacked.site_combos(head), *single.site_combos(head)]:
        CubeBlock(head.in_channels, head.out_channels, cfg)  # every offered config builds
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(30):
        trial = study.ask()
        plan = stacked.sample_plan(trial, [head])
        assert all(cfg.router != "none" for cfg in plan.values())
        study.tell(trial, 0.0)


def test_the_joint_space_offers_widths_beside_the_default_knobs():
    joint, default = SearchSpace.load("joint"), SearchSpace.load("default")
    assert joint.widths == [0.25, 0.5, 0.75] and joint.mode == "per_site"
    assert joint.knobs == default.knobs and default.widths == []
    # kept channels (R·C_out to a multiple of 8, within [8, C_out - 8]): 64 → 16, 32, 48;
    # 24 → 8, 16, 16 (0.75 repeats 0.5's count); 16 → 8, 8, 8; 8 → nothing to remove
    assert joint.site_widths(FakeSite("a", 32, "decoder", out_channels=64)) == [0.25, 0.5, 0.75]
    assert joint.site_widths(FakeSite("a", 32, "decoder", out_channels=24)) == [0.25, 0.5]
    assert joint.site_widths(FakeSite("a", 32, "decoder", out_channels=16)) == [0.25]
    assert joint.site_widths(FakeSite("a", 32, "decoder", out_channels=8)) == []
    assert joint.site_widths(FakeSite("head", 32, "decoder", 64, prediction=True)) == []
    assert default.site_widths(FakeSite("a", 32, "decoder", out_channels=64)) == []


@pytest.mark.parametrize("data, message", [
    ({"widths": [0.5, 1.2]}, r"^s.yaml: widths: 1.2 is not a kept fraction .*\(give 0 < R < 1\)$"),
    ({"widths": [0.5, 0.5]}, r"^s.yaml: widths: repeated values"),
    ({"widths": [0.5], "mode": "shared"}, r"^s.yaml: widths: .* need mode per_site \(this space is "
                                          r"shared\)$")])
def test_bad_widths_are_one_line(data, message):
    with pytest.raises(CubesearchError, match=message):
        SearchSpace.from_dict(data, source="s.yaml")


def test_a_space_with_widths_is_searched_by_the_map_strategy_only(tmp_path):
    from pathlib import Path

    from cubesearch.search import search

    tiny = str(Path(__file__).parent / "assets" / "tiny_seg.py")
    with pytest.raises(CubesearchError, match="space 'joint' offers widths .* only `search "
                                              "--strategy map` searches; --strategy trials"):
        search(tiny, "100%", out=str(tmp_path / "s"), space="joint", trials=2, strategy="trials",
               input_size=(3, 32, 32), progress=False)


def test_sites_with_a_small_lattice_q_are_searched_only_when_asked():
    # q = ceil(C_in / 4) channels per lattice position: an RGB stem has q = 1
    sites = [FakeSite("stem", 3, "encoder"), FakeSite("a", 12, "decoder"), FakeSite("b", 13, "decoder")]
    assert [s.name for s in SearchSpace(sites="all").searchable(sites)] == ["b"]  # q 1, 3, 4
    for name in ("default", "shared", "fullcube", "paper", "joint"):
        assert SearchSpace.load(name).min_lattice_q == 4
    opted = SearchSpace.from_dict({"sites": "all", "min_lattice_q": 1})
    assert [s.name for s in opted.searchable(sites)] == ["stem", "a", "b"]
    with pytest.raises(CubesearchError, match="min_lattice_q: Input should be greater than or equal to 1"):
        SearchSpace.from_dict({"min_lattice_q": 0})


def test_a_space_that_searches_nothing_says_the_lattice_q_left_the_sites_out(tmp_path):
    from pathlib import Path

    from cubesearch.search import search

    tiny = str(Path(__file__).parent / "assets" / "tiny_seg.py")
    with pytest.raises(CubesearchError, match=r"no eligible 3×3 conv matches the space's sites "
                                              r"\(.*\); 5 eligible in the whole model; 2 match "
                                              r"but have fewer than 4 channels per lattice"):
        search(tiny, "100%", out=str(tmp_path / "s"), space=str(_encoder_space(tmp_path)),
               trials=2, strategy="trials", input_size=(3, 32, 32), progress=False)


def _encoder_space(tmp_path):
    path = tmp_path / "enc.yaml"
    # the first two convs (C_in 3 and 8: q = 1 and 2)
    path.write_text(shipped_space_text("shared").replace(
        "sites: decoder", "sites: {include: ['^encoder\\.[01]\\.']}"))
    return path

"""The synthetic aerial-buildings generator and dataset: determinism, splits, masks, shadows."""

from __future__ import annotations

import hashlib
import math
import time

import numpy as np
import pytest
import torch

from cubesearch.core.errors import CubesearchError
from cubesearch.training.data import make_datasets
from cubesearch.training.data.synthetic import (
    SyntheticBuildings,
    _Canvas,
    _Tile,
    labels_to_classes,
    render_planar,
    render_tile,
    smooth_noise,
    tile_rng,
)


def digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha1()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def test_same_seed_same_tile_and_any_index_alone():
    a = render_tile(seed=3, index=7, size=64)
    b = render_tile(seed=3, index=7, size=64)
    assert digest(*a) == digest(*b)
    # drawing other tiles first changes nothing: each tile has its own stream
    render_tile(seed=3, index=6, size=64)
    assert digest(*render_tile(seed=3, index=7, size=64)) == digest(*a)
    assert digest(*render_tile(seed=4, index=7, size=64)) != digest(*a)
    assert digest(*render_tile(seed=3, index=8, size=64)) != digest(*a)


def test_train_and_val_are_disjoint():
    train = {digest(*render_planar(0, i, 48, "train")) for i in range(24)}
    val = {digest(*render_planar(0, i, 48, "val")) for i in range(24)}
    assert len(train) == 24 and len(val) == 24 and not train & val
    with pytest.raises(CubesearchError, match="unknown split 'dev'"):
        tile_rng(0, "dev", 0)


@pytest.mark.parametrize("size", [16, 64, 100, 256])
def test_any_size_gives_image_and_labels(size):
    img, labels = render_tile(1, 0, size)
    assert img.shape == (size, size, 3) and img.dtype == np.uint8
    assert labels.shape == (size, size) and labels.dtype == np.uint8
    assert set(np.unique(labels).tolist()) <= {0, 1, 2, 3}
    planar, labels2 = render_planar(1, 0, size)
    assert np.array_equal(planar.transpose(1, 2, 0), img) and np.array_equal(labels, labels2)


def test_too_small_size_is_an_error():
    with pytest.raises(CubesearchError, match="too small"):
        render_tile(0, 0, 8)


def test_masks_have_buildings_roads_and_vegetation_in_plausible_amounts():
    fractions = []
    for i in range(40):
        _, labels = render_planar(0, i, 128)
        fractions.append([(labels == c).mean() for c in range(4)])
    mean = np.mean(fractions, axis=0)
    assert 0.08 < mean[1] < 0.45  # buildings
    assert 0.03 < mean[2] < 0.30  # roads
    assert 0.05 < mean[3] < 0.60  # vegetation
    assert sum(f[1] > 0 for f in fractions) >= 30  # most tiles have buildings


def test_buildings_are_visible_in_the_image():
    """Roof pixels differ from the ground next to them (the mask matches the picture)."""
    contrast = []
    for i in range(12):
        img, labels = render_planar(2, i, 128)
        b = labels == 1
        if b.sum() < 50:
            continue
        ring = np.zeros_like(b)
        for dy, dx in ((0, 3), (0, -3), (3, 0), (-3, 0)):
            ring |= np.roll(b, (dy, dx), axis=(0, 1))
        ring &= ~b
        roof, ground = img[:, b].astype(float).mean(1), img[:, ring].astype(float).mean(1)
        contrast.append(np.abs(roof - ground).sum())
    assert np.median(contrast) > 15


def test_shadows_fall_on_the_side_away_from_the_sun():
    darker = []
    for i in range(16):
        tile = _Tile(tile_rng(5, "train", i), 128)
        img, labels = tile.render()
        b = labels == 1
        if b.sum() < 100:
            continue
        lum = img.astype(float).mean(0)
        sx, sy = tile.sun
        step = (int(round(3 * sy)), int(round(3 * sx)))
        behind = np.roll(b, step, axis=(0, 1)) & ~b  # 3 px down-sun of a roof edge
        before = np.roll(b, (-step[0], -step[1]), axis=(0, 1)) & ~b  # 3 px towards the sun
        if behind.sum() > 20 and before.sum() > 20:
            darker.append(lum[behind].mean() / lum[before].mean())
    assert len(darker) >= 6
    assert np.median(darker) < 0.85


def test_illumination_changes_from_tile_to_tile():
    means = [render_planar(9, i, 64)[0].reshape(3, -1).mean(1) for i in range(30)]
    brightness = np.array([m.mean() for m in means])
    ratio = np.array([m[2] / m[0] for m in means])  # blue / red balance
    assert brightness.std() > 10
    assert ratio.std() > 0.05


def test_shadow_hexagon_matches_a_brute_force_sweep():
    """The zonotope test in `_Canvas.rect(sweep=…)` equals ∪ₜ (rect + t·d), t ∈ [0, 1]."""
    rng = np.random.default_rng(0)
    for _ in range(10):
        cx, cy = rng.uniform(20, 44, 2)
        a, b = rng.uniform(3, 10, 2)
        ang = rng.uniform(0, math.pi)
        d = rng.uniform(-12, 12, 2)
        cv = _Canvas(64)
        cv.rect(cx, cy, a, b, ang, cv.colour((1, 1, 1), 0), sweep=tuple(d))
        c = cv.c
        x, y = c[None, :], c[:, None]
        brute = np.zeros((64, 64), bool)
        for t in np.linspace(0, 1, 401):
            dx, dy = x - cx - t * d[0], y - cy - t * d[1]
            u = dx * math.cos(ang) + dy * math.sin(ang)
            v = dy * math.cos(ang) - dx * math.sin(ang)
            brute |= (np.abs(u) <= a) & (np.abs(v) <= b)
        got = cv.shadow > 0
        # identical except possibly pixels whose centre lies within a hair of the boundary
        assert (got != brute).sum() <= 2


def test_smooth_noise_is_smooth_and_bounded():
    f = smooth_noise(np.random.default_rng(0), 64, 4)
    assert f.shape == (64, 64) and np.abs(f).max() <= 1.0
    assert np.abs(np.diff(f, axis=0)).max() < 0.2


def test_labels_to_classes():
    labels = np.array([[0, 1, 2, 3]], np.uint8)
    assert labels_to_classes(labels, 1).tolist() == [[0, 1, 0, 0]]
    assert labels_to_classes(labels, 2).tolist() == [[0, 1, 0, 0]]
    assert labels_to_classes(labels, 3).tolist() == [[0, 1, 2, 0]]
    assert labels_to_classes(labels, 4).tolist() == [[0, 1, 2, 3]]
    with pytest.raises(CubesearchError, match="at most 4 classes"):
        labels_to_classes(labels, 5)


def test_dataset_samples_augment_only_for_training():
    train = SyntheticBuildings(6, size=32, seed=1, split="train")
    val = SyntheticBuildings(6, size=32, seed=1, split="val")
    x, m = train[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.uint8
    assert m.shape == (32, 32) and m.dtype == torch.uint8 and set(m.unique().tolist()) <= {0, 1}
    # validation: the raw tile, every epoch
    v0 = val[2]
    val.set_epoch(5)
    assert torch.equal(val[2][0], v0[0]) and torch.equal(val[2][1], v0[1])
    raw, labels = val.tile(2)
    assert np.array_equal(v0[0].numpy(), raw) and np.array_equal(v0[1].numpy(), labels == 1)
    # training: a flip/rotation of the tile, reproducible per (seed, epoch, index)
    variants = set()
    for epoch in range(8):
        train.set_epoch(epoch)
        a, b = train[0], train[0]
        assert torch.equal(a[0], b[0])
        variants.add(digest(a[0].numpy()))
        assert int(a[1].sum()) == int((train.tile(0)[1] == 1).sum())  # same mask, moved
    assert len(variants) > 1
    with pytest.raises(IndexError):
        train[6]


def test_dataset_classes_and_errors():
    ds = SyntheticBuildings(2, size=32, classes=4, split="val")
    assert ds.num_classes == 4 and int(ds[0][1].max()) <= 3
    with pytest.raises(CubesearchError, match="at least 1 tile"):
        SyntheticBuildings(0)
    with pytest.raises(CubesearchError, match="1 to 4 classes"):
        SyntheticBuildings(2, classes=5)
    with pytest.raises(CubesearchError, match="unknown split"):
        SyntheticBuildings(2, split="holdout")


def test_parallel_materialize_equals_sequential():
    a = SyntheticBuildings(12, size=48, seed=2).materialize(workers=2)
    b = SyntheticBuildings(12, size=48, seed=2).materialize(workers=1)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)


def test_disk_cache_round_trip(tmp_path):
    a = SyntheticBuildings(4, size=32, seed=3, cache_dir=tmp_path).materialize()
    files = list(tmp_path.glob("synthetic-v*-seed3-train-32px-*-n4.npz"))
    assert len(files) == 1
    b = SyntheticBuildings(4, size=32, seed=3, cache_dir=tmp_path)
    assert b._ready.all() and np.array_equal(a.images, b.images)
    files[0].write_bytes(b"not a zip")
    with pytest.raises(CubesearchError, match="unreadable"):
        SyntheticBuildings(4, size=32, seed=3, cache_dir=tmp_path)



def test_data_cache_environment_variable(tmp_path, monkeypatch):
    """CUBESEARCH_DATA_CACHE gives make_datasets (hence train, search, the CLI) a disk cache."""
    monkeypatch.setenv("CUBESEARCH_DATA_CACHE", str(tmp_path))
    train, val = make_datasets("synthetic", 32, train_tiles=3, val_tiles=2, seed=5)
    names = sorted(f.name for f in tmp_path.glob("*.npz"))
    assert names == ["synthetic-v1-seed5-train-32px-scale1-n3.npz",
                     "synthetic-v1-seed5-val-32px-scale1-n2.npz"]
    again, _ = make_datasets("synthetic", 32, train_tiles=3, val_tiles=2, seed=5)
    assert again._ready.all() and np.array_equal(again.images, train.images)

def test_make_datasets_synthetic():
    train, val = make_datasets("synthetic", 32, train_tiles=5, val_tiles=3, seed=4)
    assert (len(train), len(val)) == (5, 3) and train.train and not val.train
    assert make_datasets((train, val)) == (train, val)
    with pytest.raises(CubesearchError, match="3 channels"):
        make_datasets("synthetic", 32, in_channels=4)
    with pytest.raises(CubesearchError, match="--val-split applies to dataset folders"):
        make_datasets("synthetic", 32, val_split=0.2)
    with pytest.raises(CubesearchError, match="too small"):
        make_datasets("synthetic", 8)


def test_generation_speed_floor():
    """A loose floor (the machine is shared); benchmarks/data.py measures the real figure."""
    render_planar(0, 0, 256)
    t = time.perf_counter()
    for i in range(20):
        render_planar(0, i, 256)
    assert 20 / (time.perf_counter() - t) > 40

"""Synthetic aerial building tiles: the embedded default dataset (no download needed).

Each tile is drawn procedurally, and deterministically from `(seed, split, index)`, at any size:

- a street grid at a random angle (urban, suburban or rural layout), roads with sidewalks,
  lane markings and cars, and parking lots with stall lines and parked cars (flat grey
  rectangles that are *not* buildings);
- buildings in rows along the streets, and free-standing ones in the countryside: rectangles,
  L and T shapes, rotated with their street or at random; flat roofs with parapets and rooftop
  units, gable and hip roofs whose facets are lit according to the sun; roof materials (grey
  concrete and dark asphalt close to the road colours, terracotta, shingle, white membrane,
  metal, green metal close to the vegetation);
- cast shadows in one sun direction per tile, of length proportional to each building's
  height, and shadows of trees;
- vegetation: lawns and fields from low-frequency noise, trees and woods;
- texture noise per material, a little blur, sensor noise, and per-tile illumination:
  brightness, colour temperature, a slow gradient, gamma and haze change from tile to tile, so
  raw intensities do not separate roof from ground — colour ratios, shapes and shadows do.

Labels: 0 background, 1 building, 2 road, 3 vegetation (`labels_to_classes` maps them to 1–4
classes). Object sizes are in pixels (× `scale`), so a larger tile shows a larger area.

Speed: each shape is rasterised on its bounding box only; colours are composited in one
vectorised pass from a per-tile palette; the image is planar float32 until it is quantised
through a lookup table. About 5 ms per 256×256 tile on one core (`benchmarks/data.py`).
"""

from __future__ import annotations

import bisect
import math
import random
from functools import lru_cache

import numpy as np

from cubesearch.core.errors import CubesearchError
from cubesearch.core.helpers import atomic_path
from cubesearch.training.data.base import SegmentationDataset

SPLITS = {"train": 0, "val": 1, "test": 2}
CLASS_NAMES = ("background", "building", "road", "vegetation")

# Roof materials: (name, base RGB, jitter, texture amplitude, weight per layout (urban,
# suburban, rural)). Grey concrete and dark asphalt sit on top of the road and pavement
# colours, green metal on top of vegetation: intensity alone does not separate them.
_ROOFS = (
    ("concrete", (0.62, 0.62, 0.60), 0.08, 0.05, (4.0, 1.5, 1.0)),
    ("asphalt", (0.30, 0.30, 0.31), 0.05, 0.05, (2.5, 2.0, 0.8)),
    ("white", (0.88, 0.88, 0.86), 0.05, 0.03, (2.0, 0.4, 0.5)),
    ("terracotta", (0.66, 0.36, 0.26), 0.07, 0.08, (0.8, 2.5, 1.0)),
    ("shingle", (0.40, 0.33, 0.29), 0.05, 0.09, (0.5, 2.5, 1.0)),
    ("slate", (0.36, 0.39, 0.44), 0.05, 0.06, (0.8, 1.5, 0.5)),
    ("metal", (0.58, 0.62, 0.66), 0.06, 0.04, (1.0, 0.5, 2.0)),
    ("green_metal", (0.30, 0.44, 0.36), 0.05, 0.04, (0.3, 0.3, 1.0)),
    ("red_metal", (0.56, 0.22, 0.20), 0.05, 0.04, (0.3, 0.4, 1.2)),
)
_ROOF_CUM = [list(np.cumsum([r[4][k] for r in _ROOFS]) / sum(r[4][k] for r in _ROOFS))
             for k in range(3)]
_STYLE_CUM = ([0.7, 0.9, 1.0], [0.15, 0.65, 1.0], [0.3, 0.9, 1.0])  # flat, gable, hip
_CARS = ((0.9, 0.9, 0.9), (0.1, 0.1, 0.12), (0.6, 0.62, 0.65), (0.6, 0.1, 0.1),
         (0.15, 0.2, 0.5), (0.35, 0.35, 0.35), (0.8, 0.75, 0.6))


def _pick(py: random.Random, cum: list[float]) -> int:
    return min(bisect.bisect_right(cum, py.random()), len(cum) - 1)


def _jitter(py: random.Random, rgb, amount: float, gain: float = 1.0) -> tuple[float, float, float]:
    """`rgb` × gain × (1 ± amount) per channel, kept in [0.02, 1]."""
    r, g, b = rgb
    u = py.uniform
    return (min(max(r * gain * (1 + u(-amount, amount)), 0.02), 1.0),
            min(max(g * gain * (1 + u(-amount, amount)), 0.02), 1.0),
            min(max(b * gain * (1 + u(-amount, amount)), 0.02), 1.0))


@lru_cache(maxsize=32)
def _interp(size: int, cells: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear upsampling of a (cells+1)² grid to size²: left index and weights per pixel."""
    pos = (np.arange(size, dtype=np.float64) + 0.5) / size * cells
    i0 = np.clip(np.floor(pos).astype(np.intp), 0, cells - 1)
    frac = (pos - i0).astype(np.float32)
    return i0, 1 - frac, frac


def smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """A smooth random (size, size) field in about [-1, 1], `cells` undulations across.
    (Gathers, not a matmul: a tiny BLAS call costs milliseconds of thread wake-up.)"""
    i0, w0, w1 = _interp(size, cells)
    grid = rng.uniform(-1, 1, (cells + 1, cells + 1)).astype(np.float32)
    rows = grid[i0] * w0[:, None] + grid[i0 + 1] * w1[:, None]  # (size, cells+1)
    out = rows[:, i0]
    out *= w0
    out += rows[:, i0 + 1] * w1
    return out


def _periodic(x: np.ndarray, period: float) -> tuple[np.ndarray, np.ndarray]:
    """(index of the nearest multiple of `period`, signed offset from it); much faster than
    np.mod on float32 arrays."""
    t = x * np.float32(1 / period)
    n = np.rint(t)
    t -= n
    t *= np.float32(period)
    return n, t


@lru_cache(maxsize=8)
def _centres(size: int) -> np.ndarray:
    return np.arange(size, dtype=np.float32) + 0.5


class _Canvas:
    """The layers of one tile: planar ground, palette ids + shading for everything drawn on it."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.ground = np.empty((3, size, size), dtype=np.float32)
        self.ground_tex = np.empty((size, size), dtype=np.float32)
        self.ids = np.zeros((size, size), dtype=np.uint16)  # 0 = ground, else palette entry
        self.shade = np.ones((size, size), dtype=np.float32)
        self.label = np.zeros((size, size), dtype=np.uint8)
        self.shadow = np.zeros((size, size), dtype=np.float32)  # 0 lit … 1 full shadow
        self.palette: list[tuple[float, float, float]] = [(0.0, 0.0, 0.0)]
        self.tex: list[float] = [0.0]
        self.c = _centres(size)

    def colour(self, rgb, tex: float) -> int:
        self.palette.append(tuple(rgb))
        self.tex.append(tex)
        return len(self.palette) - 1

    def window(self, cx: float, cy: float, ex: float, ey: float):
        """Slices and pixel-centre offsets of the box cx±ex, cy±ey (None when off the tile)."""
        s = self.size
        x0, x1 = max(int(cx - ex), 0), min(int(cx + ex) + 2, s)
        y0, y1 = max(int(cy - ey), 0), min(int(cy + ey) + 2, s)
        if x0 >= x1 or y0 >= y1:
            return None
        return (slice(y0, y1), slice(x0, x1), self.c[x0:x1][None, :] - cx,
                self.c[y0:y1][:, None] - cy)

    def rect(self, cx, cy, a, b, ang, pid: int, label: int | None = None, shade=None,
             sweep: tuple[float, float] | None = None):
        """Paint a rotated rectangle (half-sizes a along `ang`, b across) with palette entry
        `pid`; `shade(u, v)` gives per-pixel brightness. With `sweep` = (dx, dy), also mark its
        cast shadow: the rectangle swept along (dx, dy), a hexagon (the zonotope of the two
        sides and the shadow vector: |u'| ≤ a + |du|/2, |v'| ≤ b + |dv|/2 and the band across
        the shadow direction). Returns (ys, xs, inside, u, v) or None when off the tile."""
        ca, sa = math.cos(ang), math.sin(ang)
        ex, ey = a * abs(ca) + b * abs(sa), a * abs(sa) + b * abs(ca)
        sdx, sdy = sweep if sweep is not None else (0.0, 0.0)
        w = self.window(cx + sdx / 2, cy + sdy / 2, ex + abs(sdx) / 2, ey + abs(sdy) / 2)
        if w is None:
            return None
        ys, xs, dx, dy = w
        dx = dx + sdx / 2  # offsets from the rectangle's centre
        dy = dy + sdy / 2
        u = dx * ca + dy * sa
        v = dy * ca - dx * sa
        inside = np.abs(u) <= a
        inside &= np.abs(v) <= b
        if sweep is not None and (sdx or sdy):
            du, dv = sdx * ca + sdy * sa, sdy * ca - sdx * sa
            norm = math.hypot(du, dv)
            nu, nv = -dv / norm, du / norm
            um, vm = u - du / 2, v - dv / 2
            shadow = np.abs(um) <= a + abs(du) / 2
            shadow &= np.abs(vm) <= b + abs(dv) / 2
            band = um * nu
            band += vm * nv
            shadow &= np.abs(band) <= a * abs(nu) + b * abs(nv) + 1e-4
            self.shadow[ys, xs][shadow] = 1.0
        if not inside.any():
            return None
        self.ids[ys, xs][inside] = pid
        if shade is not None:
            self.shade[ys, xs][inside] = shade(u[inside], v[inside])
        if label is not None:
            self.label[ys, xs][inside] = label
        return ys, xs, inside, u, v

    def disc(self, cx, cy, r):
        w = self.window(cx, cy, r + 1, r + 1)
        if w is None:
            return None
        ys, xs, dx, dy = w
        return ys, xs, dx * dx + dy * dy


class _Tile:
    """Draws one tile; `render()` returns (uint8 planar image 3×H×W, uint8 labels H×W)."""

    def __init__(self, rng: np.random.Generator, size: int, scale: float = 1.0) -> None:
        self.rng, self.s, self.k = rng, size, scale
        self.py = py = random.Random(int(rng.integers(0, 2**63 - 1)))  # fast scalar draws
        self.cv = _Canvas(size)
        self.kind = _pick(py, [0.35, 0.80, 1.0])  # urban, suburban, rural
        # Sun: shadows point along (cos az, sin az); their length ∝ height / tan(elevation).
        az = py.uniform(0, 2 * math.pi)
        self.sun = (math.cos(az), math.sin(az))
        self.shadow_per_height = py.uniform(0.35, 1.1)
        choice = py.random()
        self.theta = 0.0 if choice < 0.35 else (math.pi / 4 if choice < 0.42 else py.uniform(0, math.pi))
        self.ct, self.st = math.cos(self.theta), math.sin(self.theta)
        k = scale
        if self.kind == 0:
            self.du, self.dv = py.uniform(70, 115) * k, py.uniform(110, 200) * k
            self.road_w, self.side_w = py.uniform(10, 16) * k, py.uniform(2, 4.5) * k
        elif self.kind == 1:
            self.du, self.dv = py.uniform(80, 130) * k, py.uniform(160, 320) * k
            self.road_w, self.side_w = py.uniform(7, 11) * k, py.uniform(0, 3) * k
        else:
            self.du, self.dv = py.uniform(2.5, 4) * size, math.inf
            self.road_w, self.side_w = py.uniform(5, 8) * k, 0.0
        self.u0 = py.uniform(0, self.du)
        self.v0 = py.uniform(0, self.dv) if math.isfinite(self.dv) else 0.0
        self.has_road = self.kind != 2 or py.random() < 0.6
        self.cars: int | None = None
        c = self.cv.c
        self.u = c[None, :] * self.ct + c[:, None] * self.st  # street-aligned coordinates
        self.v = c[:, None] * self.ct - c[None, :] * self.st

    # --- layers -----------------------------------------------------------------------------

    def ground(self) -> None:
        r, py, s, cv = self.rng, self.py, self.s, self.cv
        amount = (-0.6, 0.2, 0.5)[self.kind] + py.uniform(-0.3, 0.3)
        grass = smooth_noise(r, s, 3) + 0.5 * smooth_noise(r, s, 7)
        grass += amount
        grass *= 3
        grass += 0.5
        np.clip(grass, 0, 1, out=grass)
        soil = (0.55, 0.53, 0.50) if self.kind == 0 else (0.48, 0.42, 0.34)
        soil = _jitter(py, soil, 0.12)
        green = (0.48, 0.47, 0.30) if py.random() < 0.25 else (0.28, 0.42, 0.20)  # dry or lush
        green = _jitter(py, green, 0.18)
        if self.kind == 2 and py.random() < 0.5:  # ploughed / cropped field rows
            coord = self.u if py.random() < 0.5 else self.v
            rows = np.sin(coord * np.float32(2 * math.pi / (py.uniform(4, 9) * self.k)))
            rows *= 0.08
            rows *= grass
            rows += 1
        else:
            rows = None
        for ch in range(3):
            plane = cv.ground[ch]
            np.multiply(grass, green[ch] - soil[ch], out=plane)
            plane += soil[ch]
            if rows is not None:
                plane *= rows
        np.multiply(grass, 0.08, out=cv.ground_tex)
        cv.ground_tex += 0.05
        cv.label[grass > 0.5] = 3

    def roads(self) -> None:
        if not self.has_road:
            return
        py, cv, k = self.py, self.cv, self.k
        street, off_u = _periodic(self.u - np.float32(self.u0), self.du)
        dist_u = np.abs(off_u)
        dist = dist_u
        if math.isfinite(self.dv):
            dist = np.minimum(dist_u, np.abs(_periodic(self.v - np.float32(self.v0), self.dv)[1]))
        half = self.road_w / 2
        road = dist < half
        asphalt = _jitter(py, (py.uniform(0.22, 0.5),) * 3, 0.07)
        if self.kind == 2 and py.random() < 0.5:  # dirt road
            asphalt = _jitter(py, (0.55, 0.48, 0.38), 0.08, py.uniform(0.85, 1.1))
        pave = _jitter(py, (py.uniform(0.55, 0.75),) * 3, 0.05)
        if self.side_w > 0:
            cv.ids[(dist < half + self.side_w) & ~road] = cv.colour(pave, 0.03)
        cv.ids[road] = cv.colour(asphalt, 0.04)
        cv.label[road] = 2
        idx = np.flatnonzero(road)
        if idx.size == 0:
            return
        v_r, off_r = self.v.ravel()[idx], off_u.ravel()[idx]
        d_r = np.abs(off_r)
        if self.kind != 2 and self.road_w > 9 * k:  # dashed centre line
            line = (d_r < 0.6 * k) & (np.abs(_periodic(v_r, 10 * k)[1]) < 2.5 * k)
            cv.ids.ravel()[idx[line]] = cv.colour(tuple(0.85 * p / max(pave) for p in pave), 0.02)
        if self.kind == 2 and py.random() > 0.3:
            return
        # Cars in lanes along the u-streets (one lane each way), on a hashed grid of cells.
        density = (0.35, 0.2, 0.05)[self.kind]
        cell_idx, along = _periodic(v_r, 11 * k)
        key = ((street.ravel()[idx].astype(np.int64) * 7919 + cell_idx.astype(np.int64) * 104729
                + (off_r > 0) * 15485863) % 4093)
        occupied = self.rng.random(4093) < density
        colour = self.rng.integers(0, len(_CARS), 4093)
        shift = self.rng.uniform(-1.5, 1.5, 4093).astype(np.float32) * k
        along -= shift[key]
        car = occupied[key] & (np.abs(d_r - half / 2) < 1.7 * k) & (np.abs(along) < 3.6 * k)
        cv.ids.ravel()[idx[car]] = self._car_palette() + colour[key[car]]

    def _car_palette(self) -> int:
        """Palette index of this tile's first car colour (the colours are added once)."""
        if self.cars is None:
            self.cars = len(self.cv.palette)
            for rgb in _CARS:
                self.cv.colour(_jitter(self.py, rgb, 0.05), 0.02)
        return self.cars

    def parking(self) -> None:
        py, cv, k = self.py, self.cv, self.k
        n = int(self.rng.poisson((0.8, 0.5, 0.1)[self.kind] * (self.s / 256) ** 2))
        for _ in range(n):
            cx, cy = py.uniform(0, self.s), py.uniform(0, self.s)
            a, b = py.uniform(12, 35) * k, py.uniform(12, 35) * k
            ang = self.theta + (0 if py.random() < 0.8 else py.uniform(-0.5, 0.5))
            grey = _jitter(py, (py.uniform(0.3, 0.7),) * 3, 0.05)
            hit = cv.rect(cx, cy, a, b, ang, cv.colour(grey, 0.03), label=0)
            if hit is None:
                continue
            ys, xs, inside, u, v = hit
            period = py.uniform(5, 7) * k
            stall, phase = _periodic(u, period)  # phase: offset from the nearest stall line
            stripes = inside & (np.abs(phase) < 0.4 * k) & (np.abs(v) < b - 1)
            cv.ids[ys, xs][stripes] = cv.colour((0.9, 0.9, 0.88), 0.02)
            stall = (stall.astype(np.int64) + (phase > 0)) * 2 + (v > 0)
            table = self.rng.random(512) < py.uniform(0.2, 0.8)
            base = self._car_palette()
            colours = self.rng.integers(0, len(_CARS), 512)
            key = np.mod(stall, 512)
            car = (inside & table[key] & (np.abs(np.abs(phase) - period / 2) < 1.6 * k)
                   & (np.abs(np.abs(v) - b / 2) < min(3.5 * k, b / 2 - 1)))
            cv.ids[ys, xs][car] = base + colours[key[car]]

    # --- buildings ------------------------------------------------------------------------

    def _roof(self):
        py = self.py
        m = _pick(py, _ROOF_CUM[self.kind])
        _, rgb, jit, tex, _ = _ROOFS[m]
        rgb = _jitter(py, rgb, jit, py.uniform(0.85, 1.12))
        return self.cv.colour(rgb, tex), rgb, _pick(py, _STYLE_CUM[self.kind])

    def _facet_shade(self, style: int, a: float, b: float, ang: float):
        """Brightness over a roof: facets facing the sun lighter, flat roofs with a parapet."""
        ca, sa = math.cos(ang), math.sin(ang)
        tx, ty = -self.sun[0], -self.sun[1]  # towards the sun, in the rect's (u, v) frame
        su, sv = tx * ca + ty * sa, ty * ca - tx * sa
        k = 0.28
        f32 = np.float32
        if style == 0:
            rim = min(1.5 * self.k, 0.3 * min(a, b))
            lift = f32(0.82 if self.py.random() < 0.5 else 1.12)
            return lambda u, v: np.where((a - np.abs(u) < rim) | (b - np.abs(v) < rim), lift, f32(1))
        plus_v, minus_v, plus_u, minus_u = f32(1 + k * sv), f32(1 - k * sv), f32(1 + k * su), f32(1 - k * su)
        if style == 1:  # gable: the ridge runs along the longer side
            if a >= b:
                return lambda u, v: np.where(v > 0, plus_v, minus_v)
            return lambda u, v: np.where(u > 0, plus_u, minus_u)

        def hip(u, v):  # facets facing ±v where |v| − b ≥ |u| − a (the ridge is |a − b| long)
            side = np.abs(v) - b >= np.abs(u) - a
            return np.where(side, np.where(v > 0, plus_v, minus_v), np.where(u > 0, plus_u, minus_u))
        return hip

    def _row_span(self, u: float, reach: float) -> tuple[float, float] | None:
        """The v-interval where the line u = const crosses the tile grown by `reach`."""
        lo, hi = -reach, self.s + reach
        v0, v1 = -math.inf, math.inf
        # x = u·ct − v·st and y = u·st + v·ct must both lie in [lo, hi]
        for base, slope in ((u * self.ct, -self.st), (u * self.st, self.ct)):
            if abs(slope) < 1e-9:
                if not lo <= base <= hi:
                    return None
                continue
            a, b = (lo - base) / slope, (hi - base) / slope
            v0, v1 = max(v0, min(a, b)), min(v1, max(a, b))
        return (v0, v1) if v0 < v1 else None

    def _building(self, parts, height: float) -> None:
        """One building: rects (cx, cy, a, b, ang) sharing a roof, with their cast shadow."""
        pid, rgb, style = self._roof()
        length = height * self.shadow_per_height
        sdx, sdy = self.sun[0] * length, self.sun[1] * length
        for cx, cy, a, b, ang in parts:
            hit = self.cv.rect(cx, cy, a, b, ang, pid, label=1, shade=self._facet_shade(style, a, b, ang),
                               sweep=(sdx, sdy))
            if hit is not None and style == 0 and a > 9 * self.k and b > 9 * self.k:
                self._rooftop_units(cx, cy, a, b, ang, rgb)

    def _rooftop_units(self, cx, cy, a, b, ang, rgb) -> None:
        py, k = self.py, self.k
        ca, sa = math.cos(ang), math.sin(ang)
        for _ in range(py.randrange(4)):
            ua, vb = py.uniform(1.5, 3.5) * k, py.uniform(1.5, 3.5) * k
            pu, pv = py.uniform(-a + ua + 2, a - ua - 2), py.uniform(-b + vb + 2, b - vb - 2)
            pid = self.cv.colour(_jitter(py, rgb, 0.0, py.uniform(0.7, 1.3)), 0.02)
            self.cv.rect(cx + pu * ca - pv * sa, cy + pu * sa + pv * ca, ua, vb, ang, pid)

    def buildings(self) -> None:
        if self.kind == 2:
            self._rural_buildings()
        elif self.has_road:
            self._street_rows()

    def _street_rows(self) -> None:
        py, s, k = self.py, self.s, self.k
        us = [x * self.ct + y * self.st for x, y in ((0, 0), (s, 0), (0, s), (s, s))]
        urban = self.kind == 0
        fill = py.uniform(0.75, 0.97) if urban else py.uniform(0.5, 0.9)
        edge = self.road_w / 2 + self.side_w
        max_depth = (self.du - 2 * edge) / 2 - 2 * k
        reach = 70 * k  # a building this far off the tile can still cast a shadow onto it
        first = math.floor((min(us) - self.u0) / self.du) - 1
        last = math.ceil((max(us) - self.u0) / self.du) + 1
        for street in range(first, last + 1):
            uc = self.u0 + street * self.du
            for side in (-1, 1):
                setback = py.uniform(0, 3) * k if urban else py.uniform(3, 12) * k
                room = max_depth - setback
                if room < 8 * k:
                    continue
                row_u = uc + side * (edge + room / 2)
                span = self._row_span(row_u, reach)
                if span is None:
                    continue
                v, v_end = span[0] - py.uniform(0, 20) * k, span[1]
                while v < v_end:
                    lot = (py.uniform(18, 55) if urban else py.uniform(24, 42)) * k
                    vc = v + lot / 2
                    v += lot
                    if py.random() > fill:
                        continue
                    width = lot - (py.uniform(1, 4) if urban else py.uniform(5, 14)) * k
                    if width < 6 * k:
                        continue
                    depth = py.uniform(0.55, 1.0) * room if urban else min(room, py.uniform(14, 30) * k)
                    if math.isfinite(self.dv):  # keep off the cross streets
                        off = (vc - self.v0) % self.dv
                        if min(off, self.dv - off) < edge + width / 2 + 2 * k:
                            continue
                    ur = uc + side * (edge + setback + depth / 2)
                    jitter = 0.0 if urban else py.gauss(0, 0.03)
                    parts = self._shape(ur, vc, depth, width, side, room - depth)
                    height = (py.uniform(8, 30) if urban else py.uniform(5, 12)) * k
                    self._building([self._to_xy(*p, jitter) for p in parts], height)

    def _shape(self, ur, vc, depth, width, side, spare):
        """Rect, L or T as parts (u, v, half-depth, half-width) in street coordinates."""
        py, k = self.py, self.k
        parts = [(ur, vc, depth / 2, width / 2)]
        shape = _pick(py, [0.6, 0.85, 1.0])
        if shape and spare > 6 * k and width > 14 * k:
            extra = py.uniform(6 * k, min(spare, 22 * k))
            ww = py.uniform(0.3, 0.55) * width
            if shape == 1:  # L: a wing at one end
                wv = vc + (1 if py.random() < 0.5 else -1) * (width - ww) / 2
            else:  # T: a wing in the middle
                wv = vc + py.uniform(-0.1, 0.1) * width
            parts.append((ur + side * (depth / 2 + extra / 2 - 0.5), wv, extra / 2 + 0.5, ww / 2))
        return parts

    def _to_xy(self, u, v, a, b, jitter=0.0):
        return (u * self.ct - v * self.st, u * self.st + v * self.ct, a, b, self.theta + jitter)

    def _rural_buildings(self) -> None:
        py, s, k = self.py, self.s, self.k
        n = int(self.rng.poisson(3.0 * (s / 256) ** 2))
        placed: list[tuple[float, float, float]] = []
        for _ in range(n):
            a, b = py.uniform(5, 18) * k, py.uniform(4, 11) * k
            cx, cy = py.uniform(0, s), py.uniform(0, s)
            rad = math.hypot(a, b)
            if any(math.hypot(cx - x, cy - y) < rad + q + 3 for x, y, q in placed):
                continue
            if self.has_road:
                uu = cx * self.ct + cy * self.st - self.u0
                if abs(uu - round(uu / self.du) * self.du) < self.road_w / 2 + rad + 2:
                    continue
            ang = (self.theta + (0.0 if py.random() < 0.5 else math.pi / 2) if py.random() < 0.5
                   else py.uniform(0, math.pi))
            parts = [(cx, cy, a, b, ang)]
            if py.random() < 0.3:  # L-shaped farmhouse
                ca, sa = math.cos(ang), math.sin(ang)
                wb, wa = py.uniform(4, 8) * k, b * py.uniform(0.4, 0.8)
                pu, pv = a - wa, b + wb - 0.5
                parts.append((cx + pu * ca - pv * sa, cy + pu * sa + pv * ca, wa, wb, ang))
            placed.append((cx, cy, rad + (wb if len(parts) > 1 else 0)))
            self._building(parts, py.uniform(4, 10) * k)

    def trees(self) -> None:
        py, s, cv, k = self.py, self.s, self.cv, self.k
        n = int(self.rng.poisson((6, 18, 14)[self.kind] * (s / 256) ** 2))
        trees = [(py.uniform(0, s), py.uniform(0, s), py.uniform(2.5, 8) * k) for _ in range(n)]
        if self.kind == 2 and py.random() < 0.5:  # a wood: clustered trees
            cx, cy = py.uniform(0, s), py.uniform(0, s)
            m = int(self.rng.poisson(25 * (s / 256) ** 2))
            trees += [(cx + py.gauss(0, 25 * k), cy + py.gauss(0, 25 * k), py.uniform(3, 7) * k)
                      for _ in range(m)]
        lift = self.shadow_per_height * 0.8
        for x, y, q in trees:
            d = cv.disc(x + self.sun[0] * q * lift, y + self.sun[1] * q * lift, q)
            if d is not None:
                ys, xs, d2 = d
                region = cv.shadow[ys, xs]
                region[(d2 < q * q) & (region < 0.85)] = 0.85
        for x, y, q in trees:
            d = cv.disc(x, y, q)
            if d is None:
                continue
            ys, xs, d2 = d
            inside = (d2 < q * q) & (cv.label[ys, xs] != 1)
            cv.ids[ys, xs][inside] = cv.colour(_jitter(py, (0.17, 0.30, 0.13), 0.25), 0.15)
            cv.shade[ys, xs][inside] = (1.15 - 0.35 / (q * q) * d2)[inside]  # rounded crown
            cv.label[ys, xs][inside] = 3

    # --- finish -----------------------------------------------------------------------------

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        r, py, s, cv = self.rng, self.py, self.s, self.cv
        img, tex = cv.ground, cv.ground_tex
        # composite everything drawn on the ground in one pass
        idx = np.flatnonzero(cv.ids)
        if idx.size:
            pid = cv.ids.ravel()[idx]
            shade = cv.shade.ravel()[idx]
            pal = np.asarray(cv.palette, dtype=np.float32)
            for ch in range(3):
                img[ch].ravel()[idx] = pal[pid, ch] * shade
            tex.ravel()[idx] = np.asarray(cv.tex, dtype=np.float32)[pid]
        # shadows darken what is not roof; skylight makes them bluish
        shadow = cv.shadow
        shadow[cv.label == 1] = 0
        shadow *= np.float32(py.uniform(0.45, 0.7))
        dark = 1 - shadow
        img[0] *= dark
        img[1] *= dark
        dark += np.float32(0.12) * shadow
        img[2] *= dark
        # texture: smoothed white noise, amplitude per material; the same draw, unsmoothed,
        # is the sensor noise added before quantisation
        noise = r.random((s, s), dtype=np.float32)
        noise -= 0.5
        levels = 1024
        sensor = noise * np.float32(py.uniform(0.01, 0.05) * (levels - 1))
        sensor += 0.5
        noise[1:] += noise[:-1]
        noise[:, 1:] += noise[:, :-1]
        noise *= tex
        noise *= 1.7
        noise += 1
        noise += 0.12 * smooth_noise(r, s, 1)  # slow illumination gradient
        img *= noise
        if py.random() < 0.7:  # optical blur
            _blur(img)
        # per-tile illumination: brightness, colour temperature, gamma, haze — in a LUT
        gain = py.uniform(0.6, 1.35)
        gamma = py.uniform(0.8, 1.25)
        haze = py.uniform(0, 0.12)
        x = np.linspace(0, 1, levels)
        out = np.empty((3, s, s), dtype=np.uint8)
        q = np.clip(img, 0, 1, out=img)
        q *= levels - 1
        q += sensor
        np.clip(q, 0, levels - 1, out=q)
        q = q.astype(np.int16)
        for ch, haze_c in enumerate((0.75, 0.8, 0.9)):
            g = gain * math.exp(py.gauss(0, 0.09))
            lut = np.clip(x * g, 0, 1) ** gamma * (1 - haze) + haze * haze_c
            np.take((lut * 255 + 0.5).astype(np.uint8), q[ch], out=out[ch])
        return out, cv.label

    def render(self) -> tuple[np.ndarray, np.ndarray]:
        self.ground()
        self.parking()
        self.roads()
        self.buildings()
        self.trees()
        return self.finish()


def _blur(img: np.ndarray) -> None:
    """In-place 2×2 box blur of a planar C×H×W image (a half-pixel shift, like a soft lens)."""
    img[:, 1:] += img[:, :-1]
    img[:, :, 1:] += img[:, :, :-1]
    img *= 0.25
    img[:, 0] *= 2
    img[:, :, 0] *= 2


def tile_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of one tile: each (seed, split, index) is its own independent stream, so
    train and val tiles never coincide and any tile can be drawn alone."""
    if split not in SPLITS:
        raise CubesearchError(f"unknown split {split!r} (choose from {', '.join(SPLITS)})")
    return np.random.default_rng(np.random.SeedSequence([int(seed), SPLITS[split], int(index)]))


def render_planar(seed: int = 0, index: int = 0, size: int = 256, split: str = "train",
                  scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """One tile as (uint8 image 3×H×W, uint8 labels H×W)."""
    if int(size) < 16:
        raise CubesearchError(f"synthetic tile size {size} is too small (at least 16)")
    return _Tile(tile_rng(seed, split, index), int(size), float(scale)).render()


def render_tile(seed: int = 0, index: int = 0, size: int = 256, split: str = "train",
                scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """One tile as (uint8 image H×W×3, uint8 labels H×W: 0 background, 1 building, 2 road,
    3 vegetation). The same arguments always give the same tile."""
    img, labels = render_planar(seed, index, size, split, scale)
    return np.ascontiguousarray(img.transpose(1, 2, 0)), labels


def labels_to_classes(labels: np.ndarray, classes: int) -> np.ndarray:
    """The generator's labels as `classes` classes: 1 or 2 → building (1) vs the rest (0);
    3 → background, building, road; 4 → background, building, road, vegetation."""
    if classes <= 2:
        return (labels == 1).astype(np.uint8)
    if classes == 3:
        out = labels.copy()
        out[out == 3] = 0
        return out
    if classes == 4:
        return labels
    raise CubesearchError(f"the synthetic dataset has at most 4 classes "
                          f"({', '.join(CLASS_NAMES)}), not {classes}")


# --- the dataset ------------------------------------------------------------------------------

GENERATOR_VERSION = 1  # bump when the drawing changes: disk caches are keyed by it


def _render_range(args: tuple[int, str, int, float, int, int]) -> tuple[np.ndarray, np.ndarray]:
    seed, split, size, scale, start, stop = args
    images = np.empty((stop - start, 3, size, size), dtype=np.uint8)
    labels = np.empty((stop - start, size, size), dtype=np.uint8)
    for j, i in enumerate(range(start, stop)):
        images[j], labels[j] = render_planar(seed, i, size, split, scale)
    return images, labels


def _auto_workers(n: int, size: int) -> int:
    """Processes for eager generation: only worth forking for a few seconds of work."""
    import multiprocessing as mp
    import os

    if "fork" not in mp.get_all_start_methods() or n * size * size < 128 * 256 * 256:
        return 1
    return max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                      else (os.cpu_count() or 1)))


class SyntheticBuildings(SegmentationDataset):
    """`n` synthetic aerial tiles with building masks, `size`×`size`, deterministic from
    (`seed`, `split`, index); `split="train"` and `"val"` never share a tile.

    `classes`: 1 (default; binary, sigmoid) or 2 (background/building, softmax), 3 (+ road),
    4 (+ vegetation). Training tiles (split "train") are flipped/rotated per epoch; tiles are
    drawn on first use and kept in memory (`materialize()` draws them all, in parallel
    processes for large sets); `cache_dir` keeps them on disk across runs.
    """

    name = "synthetic"

    def __init__(self, n: int, size: int = 256, seed: int = 0, split: str = "train", *,
                 classes: int = 1, scale: float = 1.0, augment: bool | None = None,
                 cache_dir: str | None = None) -> None:
        if split not in SPLITS:
            raise CubesearchError(f"unknown split {split!r} (choose from {', '.join(SPLITS)})")
        if int(n) < 1:
            raise CubesearchError(f"the synthetic dataset needs at least 1 tile, not {n}")
        if int(size) < 16:
            raise CubesearchError(f"synthetic tile size {size} is too small (at least 16)")
        if not 1 <= int(classes) <= 4:
            raise CubesearchError(f"the synthetic dataset has 1 to 4 classes "
                                  f"({', '.join(CLASS_NAMES)}), not {classes}")
        super().__init__(train=(split == "train") if augment is None else augment, seed=seed)
        self.n, self.size, self.split, self.scale = int(n), int(size), split, float(scale)
        self.num_classes, self.in_channels = int(classes), 3
        self.images = np.empty((self.n, 3, self.size, self.size), dtype=np.uint8)
        self.labels = np.empty((self.n, self.size, self.size), dtype=np.uint8)
        self._ready = np.zeros(self.n, dtype=bool)
        self.cache_file = None
        if cache_dir:
            from pathlib import Path

            self.cache_file = Path(cache_dir) / (
                f"synthetic-v{GENERATOR_VERSION}-seed{self.seed}-{split}-{self.size}px"
                f"-scale{self.scale:g}-n{self.n}.npz")
            self._load_cache()

    def __len__(self) -> int:
        return self.n

    def tile(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 image 3×H×W, uint8 generator labels H×W), drawn once then cached."""
        if not self._ready[index]:
            self.images[index], self.labels[index] = render_planar(
                self.seed, index, self.size, self.split, self.scale)
            self._ready[index] = True
        return self.images[index], self.labels[index]

    def load(self, index: int, rng=None) -> tuple[np.ndarray, np.ndarray]:
        image, labels = self.tile(index)
        return image, labels_to_classes(labels, self.num_classes)

    def materialize(self, workers: int | None = None) -> SyntheticBuildings:
        """Draw every tile now (in `workers` forked processes; default: automatic)."""
        todo = np.flatnonzero(~self._ready)
        if todo.size == 0:
            return self
        workers = _auto_workers(int(todo.size), self.size) if workers is None else int(workers)
        if workers > 1 and todo.size == self.n:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            bounds = np.linspace(0, self.n, workers * 4 + 1).astype(int)
            jobs = [(self.seed, self.split, self.size, self.scale, int(a), int(b))
                    for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]
            with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork")) as pool:
                for (_, _, _, _, a, b), (imgs, labs) in zip(jobs, pool.map(_render_range, jobs),
                                                            strict=True):
                    self.images[a:b], self.labels[a:b] = imgs, labs
            self._ready[:] = True
        else:
            for i in todo:
                self.tile(int(i))
        self._save_cache()
        return self

    def _load_cache(self) -> None:
        if self.cache_file is None or not self.cache_file.exists():
            return
        try:
            with np.load(self.cache_file) as data:
                images, labels = data["images"], data["labels"]
        except Exception as exc:  # a truncated or foreign file: redraw, never trust it
            raise CubesearchError(f"synthetic cache {self.cache_file} is unreadable ({exc}); "
                                  "delete it to redraw the tiles") from None
        if images.shape != self.images.shape or labels.shape != self.labels.shape:
            raise CubesearchError(f"synthetic cache {self.cache_file} holds {images.shape}, "
                                  f"expected {self.images.shape}; delete it to redraw")
        self.images[:], self.labels[:] = images, labels
        self._ready[:] = True

    def _save_cache(self) -> None:
        if self.cache_file is None or self.cache_file.exists() or not self._ready.all():
            return
        with atomic_path(self.cache_file) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, images=self.images, labels=self.labels)

    def describe(self) -> str:
        return (f"synthetic buildings ({self.split}, seed {self.seed}): {self.n} tiles of "
                f"3×{self.size}×{self.size}, {self.num_classes} class"
                f"{'es' if self.num_classes > 1 else ''}")

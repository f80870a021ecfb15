"""`OUT/map.png`: the map as two heat maps, sites in data-flow order across, options down.

Top: ΔIoU of each cell against the baseline, on a diverging colour map centred at 0 (red loses,
blue gains), the value written in the cell. Bottom: the cell's ΔGFLOPs, on its own diverging map
(green saves, purple costs). A grey cell is an option the space does not offer at that site.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def grid(cells: Sequence[Mapping[str, Any]], sites: Sequence[str], key: str
         ) -> tuple[list[str], np.ndarray]:
    """(option labels, values[label, site]) of `key`, NaN where a site lacks the option."""
    labels: list[str] = []
    for c in cells:
        label = c.get("change") or c["option"]
        if label not in labels:
            labels.append(label)
    values = np.full((len(labels), len(sites)), np.nan)
    column = {s: i for i, s in enumerate(sites)}
    for c in cells:
        value = c.get(key)
        if c["site"] in column and value is not None:
            values[labels.index(c.get("change") or c["option"]), column[c["site"]]] = float(value)
    return labels, values


def _panel(ax: Any, fig: Any, values: np.ndarray, labels: Sequence[str], sites: Sequence[str],
           cmap: str, title: str, fmt: str) -> None:
    from matplotlib.colors import CenteredNorm

    shown = np.ma.masked_invalid(values)
    image = ax.imshow(shown, cmap=cmap, norm=CenteredNorm(vcenter=0.0), aspect="auto")
    image.set_cmap(image.cmap.with_extremes(bad="#dddddd"))
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_xticks(range(len(sites)), sites, fontsize=7, rotation=60, ha="right")
    ax.set_title(title, fontsize=9)
    if values.size <= 400:  # the values themselves, while they fit
        for (i, j), v in np.ndenumerate(values):
            if np.isfinite(v):
                ax.text(j, i, format(v, fmt), ha="center", va="center", fontsize=5)
    fig.colorbar(image, ax=ax, fraction=0.03, pad=0.01)


def plot_map(data: Mapping[str, Any], png: Path) -> Path:
    """Draw map.json's content (`sites`, `cells`, `baseline_iou`) into `png`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sites = [s["name"] for s in data["sites"]]
    cells = data["cells"]
    labels, iou = grid(cells, sites, "delta_iou")
    _, gflops = grid(cells, sites, "delta_gflops")
    width = max(6.0, 0.45 * len(sites) + 3)
    height = max(5.0, 0.5 * len(labels) + 3)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(width, height), dpi=120)
    _panel(top, fig, iou, labels, sites, "RdBu",
           f"{data.get('model')}: ΔIoU of each option alone (baseline IoU "
           f"{float(data['baseline_iou']):.4f})", "+.3f")
    _panel(bottom, fig, gflops, labels, sites, "PRGn_r",
           f"ΔGFLOPs at {'x'.join(map(str, data.get('input_size') or []))} "
           f"(the model: {float(data.get('base_gflops') or 0):.3f})", "+.2f")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png)
    plt.close(fig)
    return png

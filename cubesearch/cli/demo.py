"""`cubesearch demo`: the main job on the embedded default."""

from __future__ import annotations

import typer
from rich.table import Table

from cubesearch.cli.app import app, out_console, print_json


def cost_table_rows(channels: int = 96, size: int = 128) -> list[dict]:
    """Params and FLOPs of CubeBlock(C, C) against nn.Conv2d(C, C, 3) at C×size×size."""
    import torch

    from cubesearch.blocks import CubeBlock, block_cost
    from cubesearch.blocks.cost import conv_cost
    from cubesearch.cost import fvcore_flops

    x = torch.zeros(1, channels, size, size)
    conv = torch.nn.Conv2d(channels, channels, 3, padding=1)
    block = CubeBlock(channels, channels)
    rows = []
    for name, module, analytic in (
        ("Conv2d 3×3", conv, conv_cost(channels, channels, 3, 1, size)),
        ("CubeBlock", block, block_cost(channels, channels, None, 1, size)),
    ):
        rows.append({
            "module": name,
            "params": sum(p.numel() for p in module.parameters()),
            "params_formula": analytic.params,
            "conv_gmacs_formula": analytic.conv_macs_spec / 1e9,
            "gflops_fvcore": fvcore_flops(module.train(), (x,)) / 1e9,
        })
    return rows


@app.command()
def demo(
    channels: int = typer.Option(96, help="C_in = C_out of the block and the conv."),
    size: int = typer.Option(128, help="Input height and width."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Run the main job on the embedded default (for now: the Cube block's cost table)."""
    rows = cost_table_rows(channels, size)
    if as_json:
        print_json({"cost_table": rows, "channels": channels, "size": size})
        return
    table = Table(title=f"Cube block vs 3×3 conv, C_in = C_out = {channels}, 1×{channels}×{size}×{size}")
    for col in ("module", "params", "conv GMACs (formula)", "GFLOPs (fvcore)"):
        table.add_column(col, justify="left" if col == "module" else "right")
    for r in rows:
        table.add_row(r["module"], f"{r['params']:,}", f"{r['conv_gmacs_formula']:.3f}",
                      f"{r['gflops_fvcore']:.3f}")
    conv, cube = rows
    out_console(False).print(table)
    out_console(False).print(
        f"Cube block: {conv['params'] / cube['params']:.2f}× fewer parameters, "
        f"{conv['conv_gmacs_formula'] / cube['conv_gmacs_formula']:.2f}× fewer conv MACs."
    )

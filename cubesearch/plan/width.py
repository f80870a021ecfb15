"""Channel width as a plan option: a conv narrowed by channel pruning (Torch-Pruning).

`Plan.widths` maps a conv's qualified name to R, the kept fraction of its output channels.
`narrow(model, widths, input_size)` removes, in place, the output channels of each named conv
with the smallest L1 norm (the sum of |w| over a filter: magnitude pruning of a trained
baseline, so the kept filters are the trained ones), keeping `kept_channels(C_out, R)` of them:
R·C_out rounded to a multiple of 8, at least 8 and fewer than C_out. Torch-Pruning's
`DependencyGraph` carries the cut to everything coupled with those channels (the BatchNorm
after the conv, the next convs' input channels, convs joined by a residual add or a concat);
cubesearch does no dependency tracking of its own.

The indices kept are not recorded: a saved model is rebuilt by narrowing a fresh model by the
plan (which gives the same shapes), then loading its weights.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from cubesearch.core.errors import CubesearchError, one_line
from cubesearch.core.helpers import close_names, eval_mode, first_tensor, zero_input

MULTIPLE = 8  # kept channels are a multiple of this (what tensor cores and SIMD widths like)
NARROWED = "cubesearch_widths"  # attribute of a narrowed model: the widths it was narrowed by


def kept_channels(out_channels: int, ratio: float) -> int:
    """Output channels a conv keeps at width `ratio`: `ratio·C_out` rounded to the nearest
    multiple of 8 (halves up), then held within [8, the largest multiple of 8 below C_out].
    Raises where no narrower multiple of 8 exists (C_out ≤ 8)."""
    if not 0 < ratio < 1:
        raise CubesearchError(f"width {ratio!r}: a kept fraction of the output channels must be "
                              "between 0 and 1 (exclusive)")
    top = (out_channels - 1) // MULTIPLE * MULTIPLE
    if top < MULTIPLE:
        raise CubesearchError(f"it has {out_channels} output channels, and a width keeps a "
                              f"multiple of {MULTIPLE}, at least {MULTIPLE} and fewer than C_out")
    nearest = int(ratio * out_channels / MULTIPLE + 0.5) * MULTIPLE
    return min(max(nearest, MULTIPLE), top)


def smallest_filters(conv: nn.Conv2d, n: int) -> list[int]:
    """Indices of the `n` output filters of `conv` with the smallest L1 norm (ties: lower index
    first), sorted."""
    l1 = conv.weight.detach().abs().flatten(1).sum(1)
    order = sorted(range(len(l1)), key=lambda i: (float(l1[i]), i))
    return sorted(order[:n])


def _convs(model: nn.Module, widths: Mapping[str, float]) -> dict[str, nn.Conv2d]:
    modules = dict(model.named_modules())
    convs = {}
    for name in widths:
        conv = modules.get(name)
        if not isinstance(conv, nn.Conv2d):
            pool = [n for n, m in modules.items() if isinstance(m, nn.Conv2d)]
            what = "is not an nn.Conv2d" if conv is not None else "does not exist"
            raise CubesearchError(f"plan narrows {name!r}, which {what}{close_names(name, pool)}")
        convs[name] = conv
    return convs


def _output_shapes(model: nn.Module, x: torch.Tensor) -> list[tuple[int, ...]]:
    with torch.no_grad():
        out = model(x)
    outs = out if isinstance(out, (list, tuple)) else [out]
    return [tuple(t.shape) for t in (first_tensor(o) for o in outs) if t is not None]


def narrow(model: nn.Module, widths: Mapping[str, float], input_size: Sequence[int]) -> nn.Module:
    """Prune `model` in place so that each conv in `widths` keeps `kept_channels(C_out, R)` of
    its output channels, the largest-L1 filters; returns `model`.

    One `DependencyGraph` is built (a real forward at `(1, *input_size)`, eval mode), then each
    conv's pruning group is cut. Targets are set by each conv's channels before any cut; two
    convs coupled by a residual add or a concat must then be given the same width. A conv whose
    cut would change the model's output (the one computing the logits) is refused. The model
    records its widths (`narrowed_by`): narrowing it again is refused, since R is a fraction of
    the unnarrowed channels.
    """
    if not widths:
        return model
    if narrowed_by(model):
        raise CubesearchError(f"the model is narrowed already (widths {narrowed_by(model)}); "
                              "narrow the unnarrowed model")
    with warnings.catch_warnings():  # its import warns that torch.jit.script is deprecated
        warnings.simplefilter("ignore", FutureWarning)
        import torch_pruning as tp  # lazy: only plans with widths need it, and it imports slowly

    convs = _convs(model, widths)
    targets = {}
    for name, conv in convs.items():
        try:
            targets[name] = kept_channels(conv.out_channels, widths[name])
        except CubesearchError as exc:
            raise CubesearchError(f"cannot narrow {name!r}: {exc}") from None
    before = {name: conv.out_channels for name, conv in convs.items()}
    with eval_mode(model), torch.enable_grad():
        x = zero_input(model, input_size)
        shapes = _output_shapes(model, x)
        try:
            graph = tp.DependencyGraph().build_dependency(model, example_inputs=x)
        except Exception as exc:  # noqa: BLE001 - one clear line
            raise CubesearchError(f"Torch-Pruning cannot trace the model to narrow it: "
                                  f"{one_line(exc, with_type=True)}") from exc
        for name, conv in convs.items():
            _cut(graph, tp, name, conv, targets[name], before[name])
        after = _output_shapes(model, x)
    if after != shapes:
        changed = {s[1] for s in after if len(s) > 1} - {s[1] for s in shapes if len(s) > 1}
        culprits = [n for n in convs if targets[n] in changed] or list(convs)
        raise CubesearchError(f"{culprits[0]!r} cannot be narrowed: it changes the model's output "
                              f"from {shapes[0]} to {after[0]} (it computes the output)")
    setattr(model, NARROWED, dict(widths))
    return model


def narrowed_by(model: nn.Module) -> dict[str, float]:
    """The widths `narrow` applied to `model` ({} for a model it never narrowed)."""
    return dict(getattr(model, NARROWED, None) or {})


def narrowed_like(model: nn.Module, widths: Mapping[str, float], input_size: Sequence[int]
                  ) -> nn.Module:
    """A trained, unnarrowed `model` narrowed by `widths` (a copy; `model` itself when there
    are no widths or it is narrowed by these already): the warm start and the distillation
    teacher of a plan with widths, whose narrowed convs keep the trained model's own
    largest-L1 filters (a model narrowed fresh keeps other filters, by its random weights)."""
    done = narrowed_by(model)
    if not widths or done == dict(widths):
        return model
    if done:
        raise CubesearchError(f"the baseline is narrowed by other widths ({done}) than the plan's "
                              f"({dict(widths)})")
    return narrow(copy.deepcopy(model), widths, input_size)


def _cut(graph: Any, tp: Any, name: str, conv: nn.Conv2d, target: int, before: int) -> None:
    current = conv.out_channels
    if current == target:
        return
    if current != before:
        raise CubesearchError(f"{name!r} shares its output channels with another narrowed conv "
                              f"(a residual add or concat): it was cut to {current} channels, "
                              f"its width asks for {target}; give coupled convs the same width")
    idxs = smallest_filters(conv, current - target)
    group = graph.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=idxs)
    if not graph.check_pruning_group(group):
        raise CubesearchError(f"{name!r} cannot be narrowed to {target} channels: Torch-Pruning "
                              "would leave a layer without channels")
    group.prune()

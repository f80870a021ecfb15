"""What tracing finds: `Site` (an eligible conv), `SiteReport`, eligibility rules and roles.

Eligible by default: `nn.Conv2d`, kernel 3×3, dilation 1, groups 1, padding 1, stride 1.
`depthwise=True` admits depthwise convs (groups = C_in), `strided=True` strided ones.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from cubesearch.blocks import CubeConfig, block_cost, lattice_channels
from cubesearch.core.helpers import pair

ROLES = ("encoder", "decoder")


@dataclass(frozen=True)
class Site:
    """One eligible conv module (possibly called several times) at the reference input."""

    name: str
    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    stride: int
    groups: int
    dilation: tuple[int, int]
    padding: tuple[int, int]
    bias: bool
    input_hw: tuple[int, int]  # input H×W of the first call
    output_hw: tuple[int, int]
    calls: int
    call_shapes: tuple[tuple[int, int], ...]  # input H×W of every call
    macs: int  # as fvcore counts the conv (one MAC = one FLOP), summed over calls, batch 1
    params: int
    role: str  # "encoder" (backbone) or "decoder" (decoder / neck / head)
    # fvcore's count of everything inside the module (eval, batch 1): `macs`, plus any extra
    # work its forward does (e.g. weight standardisation); None when FLOPs were not counted.
    flops: int | None = None
    # The model's prediction conv: the last conv call, its output channels those of the model's
    # output (it computes the logits). Search spaces leave it alone unless asked (`prediction_conv`).
    prediction: bool = False

    @property
    def resolution(self) -> str:
        return f"{self.input_hw[0]}×{self.input_hw[1]}"

    @property
    def depthwise(self) -> bool:
        return self.groups > 1

    @property
    def lattice_q(self) -> int:
        """Channels per lattice position of a block here: C_in padded to a multiple of 4, over
        4 (an RGB stem: 3 → 4, q = 1)."""
        return lattice_channels(self.in_channels) // 4

    @property
    def conv_flops(self) -> int:
        """What fvcore counts inside the conv module (its MACs when FLOPs were not counted)."""
        return self.macs if self.flops is None else self.flops

    def block_cost(self, config: CubeConfig, *, training: bool = False) -> tuple[int, int]:
        """(FLOPs summed over every call, params) of a block with `config` here, as fvcore
        counts it (`blocks.block_cost`)."""
        flops = params = 0
        for h, w in self.call_shapes:
            cost = block_cost(self.in_channels, self.out_channels, config, self.stride, h, w,
                              training=training)
            flops += cost.flops
            params = cost.params
        return flops, params

    def block_ratio(self, config: CubeConfig | None = None) -> float:
        """The block's FLOPs over the conv's (eval): above 1 a block here costs more than the
        conv it replaces (a prediction conv with few output channels, say)."""
        return self.block_cost(config or CubeConfig())[0] / max(self.conv_flops, 1)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("kernel", "dilation", "padding", "input_hw", "output_hw"):
            d[key] = list(d[key])
        d["call_shapes"] = [list(s) for s in self.call_shapes]
        d["lattice_q"] = self.lattice_q
        d["default_block_ratio"] = round(self.block_ratio(), 4)
        return d


@dataclass
class SiteReport:
    """What `find_sites` found. Iterating over it yields the eligible `Site`s."""

    model: str
    input_size: tuple[int, int, int]
    sites: list[Site]
    skipped: dict[str, str]  # conv module name → why it is not eligible
    trace_path: str
    trace_notes: list[str]
    base_flops: int | None  # fvcore, eval mode, batch 1 (None if flops=False or fvcore failed)
    base_params: int
    conv_macs: int  # every conv call the trace saw (eligible or not), batch 1
    seconds: float  # tracing and site analysis
    flops_seconds: float = 0.0  # fvcore's count of the base model (real compute)
    depthwise: bool = False
    strided: bool = False
    smp: bool = False
    uncalled: list[str] = field(default_factory=list)  # conv modules forward never reached
    output_shapes: dict[str, list[tuple[int, ...]]] = field(default_factory=dict)
    output_shape: tuple[int, ...] | None = None  # the model's output (first tensor), batch 1

    def __iter__(self) -> Iterator[Site]:
        return iter(self.sites)

    def __len__(self) -> int:
        return len(self.sites)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.sites]

    def site(self, name: str) -> Site:
        for s in self.sites:
            if s.name == name:
                return s
        raise KeyError(name)

    def by_role(self, role: str) -> list[Site]:
        return [s for s in self.sites if s.role == role]

    @property
    def eligible_macs(self) -> int:
        return sum(s.macs for s in self.sites)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "input_size": list(self.input_size),
            "trace_path": self.trace_path,
            "trace_notes": list(self.trace_notes),
            "seconds": round(self.seconds, 4),
            "flops_seconds": round(self.flops_seconds, 4),
            "base_flops": self.base_flops,
            "base_gflops": None if self.base_flops is None else self.base_flops / 1e9,
            "base_params": self.base_params,
            "conv_macs": self.conv_macs,
            "eligible_macs": self.eligible_macs,
            "depthwise": self.depthwise,
            "strided": self.strided,
            "n_sites": len(self.sites),
            "n_encoder": len(self.by_role("encoder")),
            "n_decoder": len(self.by_role("decoder")),
            "sites": [s.to_dict() for s in self.sites],
            "skipped": dict(self.skipped),
            "uncalled": list(self.uncalled),
        }


@dataclass
class Call:
    """One call of a conv module, as a tracer saw it (batch 1 shapes)."""

    name: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]


# --- eligibility and roles ---------------------------------------------------------------------


def conv_eligibility(conv: nn.Module, *, depthwise: bool = False, strided: bool = False) -> str | None:
    """None if a Cube block can replace `conv` under these rules, else the reason why not."""
    if not isinstance(conv, nn.Conv2d):
        return f"not an nn.Conv2d ({type(conv).__name__})"
    k = pair(conv.kernel_size)
    if k != (3, 3):
        return f"{k[0]}×{k[1]} kernel"
    if pair(conv.dilation) != (1, 1):
        return f"dilation {conv.dilation[0]}"
    if conv.padding != "same" and pair(conv.padding) != (1, 1):
        return f"padding {conv.padding if isinstance(conv.padding, str) else pair(conv.padding)[0]}"
    if conv.groups != 1:
        if conv.groups == conv.in_channels and conv.in_channels > 1:
            if not depthwise:
                return "depthwise (use --depthwise)"
        else:
            return f"grouped conv (groups={conv.groups})"
    s = pair(conv.stride)
    if s[0] != s[1]:
        return f"non-square stride {s}"
    if s[0] != 1 and not strided:
        return f"stride {s[0]} (use --strided)"
    return None


def replaceable(conv: nn.Module) -> str | None:
    """What `convert` accepts: any conv a block can stand in for (depthwise and strided too)."""
    return conv_eligibility(conv, depthwise=True, strided=True)


_DECODER = re.compile(
    r"^(decoder|decoders|dec\d*|decode_head|auxiliary_head|aux_head|head|heads|neck|necks|fpn|"
    r"aspp|ppm|psp\w*|up\w*|deconv\w*|segmentation_head|seg_head|classification_head|classifier|"
    r"cls_head|fuse\w*|fusion\w*|lateral\w*|out\w*|final\w*|refine\w*|expand\w*|expanding\w*|"
    r"expansive\w*|merge\w*|mask_head|pred\w*|logits?)$",
    re.IGNORECASE,
)
_ENCODER = re.compile(
    r"^(encoder|encoders|enc\d*|backbone|body|stem|conv_stem|features|feature_extractor|"
    r"down\w*|contract\w*|inc|input\w*|layer\d*|stages?|blocks?|patch_embed\w*|bottleneck|"
    r"bridge|center|trunk|base|pool\w*)$",
    re.IGNORECASE,
)


def role_of(name: str, *, smp: bool = False) -> str:
    """`encoder` (backbone) or `decoder` (decoder, neck, head).

    smp models: everything under `encoder.` is the encoder. Other models: the first component
    of the qualified name that matches a known encoder or decoder word decides (decoder, head,
    neck, up*, out*… vs encoder, backbone, stem, down*, layerN…); no match means backbone, which
    is right for classifiers. `--include/--exclude` override this when choosing sites.
    """
    if smp:
        return "encoder" if name == "encoder" or name.startswith("encoder.") else "decoder"
    for part in name.split("."):
        if _DECODER.match(part):
            return "decoder"
        if _ENCODER.match(part):
            return "encoder"
    return "encoder"


# --- per call ----------------------------------------------------------------------------------


def conv_macs(conv: nn.Conv2d, out_shape: Sequence[int]) -> int:
    """fvcore's count for one conv call: N·C_out·(C_in/groups)·kh·kw·H_out·W_out (no bias)."""
    n, _, h, w = out_shape
    kh, kw = pair(conv.kernel_size)
    return int(n) * conv.out_channels * (conv.in_channels // conv.groups) * kh * kw * int(h) * int(w)


def prediction_conv(calls: Sequence[Call], out_shape: Sequence[int] | None) -> str | None:
    """The conv that computes a dense prediction's logits: the last conv called, when its output
    has the model output's channels and the output is a feature map (B, K, H, W)."""
    if not calls or out_shape is None or len(out_shape) != 4:
        return None
    last = calls[-1]
    if len(last.out_shape) == 4 and last.out_shape[1] == out_shape[1]:
        return last.name
    return None

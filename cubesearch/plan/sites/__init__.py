"""Sites: the 3×3 convs of a model where a Cube block can go (docs/design.md).

`find_sites(model, input_size)` traces the model at the reference input without real compute
where it can, and records every `nn.Conv2d` call with its shapes. Tracing tries, in order:

1. `export` (`export_trace`): `torch.export.export(model, (x,), strict=False)` (fake tensors);
   each `aten.conv2d` node maps back to its module through `nn_module_stack` (or its weight).
2. `fx` (`fx_trace`): `torch.fx` symbolic tracing with timm's leaf modules / functions, shapes
   propagated on fake tensors (convs inside leaf modules are seen through forward hooks).
3. `hooks` (`hook_trace`): a `named_modules()` walk with forward hooks on every conv, running
   the model on fake tensors, and as a last resort on real (zero) tensors under `torch.no_grad()`.

The report says which path was used and why the earlier ones failed. A conv module called at
several places is one site with `calls > 1`; its MACs sum over the calls. `records` holds what
is found (`Site`, `SiteReport`, eligibility, roles, the prediction conv); `fake` the fake-tensor
mode the tracers share.
"""

from __future__ import annotations

from cubesearch.core.helpers import (
    close_names,
    eval_mode,
    first_tensor,
    model_device,
    model_dtype,
    parse_input_size,
    quiet,
)
from cubesearch.plan.sites.fake import block_caches_safe
from cubesearch.plan.sites.find import find_sites
from cubesearch.plan.sites.hook_trace import module_output_shapes
from cubesearch.plan.sites.records import (
    ROLES,
    Call,
    Site,
    SiteReport,
    conv_eligibility,
    conv_macs,
    prediction_conv,
    replaceable,
    role_of,
)
from cubesearch.plan.sites.tracing import TRACE_PATHS, trace_convs

__all__ = ["ROLES", "TRACE_PATHS", "Call", "Site", "SiteReport", "block_caches_safe", "close_names",
           "conv_eligibility", "conv_macs", "eval_mode", "find_sites", "first_tensor", "model_device",
           "model_dtype", "module_output_shapes", "parse_input_size", "prediction_conv", "quiet",
           "replaceable", "role_of", "trace_convs"]

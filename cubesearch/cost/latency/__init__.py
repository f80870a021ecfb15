"""Latency as a cost: measure what a plan costs on the user's own device.

- `fingerprint`: the device a table was measured on (CPU model and threads, or GPU name; torch;
  batch; dtype).
- `measure`: medians after warm-up in the deploy form (eval, blocks folded, fastest layout);
  CUDA events and synchronisation on a GPU.
- `table`: the JSON latency table keyed by the fingerprint, reused when it matches.
- `profile`: fill a table for a model and a search space (`cubesearch profile`).
- `model`: `LatencyModel`, base − Σ replaced convs + Σ blocks, with an optional per-device
  correction fitted on a few whole-model measurements.
"""

from cubesearch.cost.latency.fingerprint import Fingerprint, device_fingerprint, resolve_device
from cubesearch.cost.latency.model import Correction, LatencyModel, fit_correction
from cubesearch.cost.latency.profile import ProfileStats, measure_plans, profile_latency
from cubesearch.cost.latency.table import LatencyTable, model_key

__all__ = [
    "Correction",
    "Fingerprint",
    "LatencyModel",
    "LatencyTable",
    "ProfileStats",
    "device_fingerprint",
    "fit_correction",
    "measure_plans",
    "model_key",
    "profile_latency",
    "resolve_device",
]

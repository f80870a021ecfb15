"""`evaluate`: the paper's metrics of a model on a dataset, over the whole set."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cubesearch.core.helpers import resolve_device
from cubesearch.training.config import DEFAULT_BATCH
from cubesearch.training.inputs import Inputs, autocast
from cubesearch.training.losses import TrainingDiverged, check_classes, logits_of, make_loss
from cubesearch.training.metrics import SegmentationMetrics


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Any, *, batch_size: int = DEFAULT_BATCH,
             num_classes: int | None = None, loss: str = "bce", device: str | torch.device | None = None,
             amp: bool | None = None, channels_last: bool | None = None, normalize: bool = True,
             workers: int = 0, _inputs: Inputs | None = None) -> dict[str, Any]:
    """The paper's metrics of `model` on `dataset` (OA, precision, recall, F1, IoU, loss), over
    the whole set. The model is put in eval mode and left on the device used."""
    from torch.utils.data import DataLoader  # imported on use: keeps `import cubesearch` light

    dev = resolve_device(device) if _inputs is None else _inputs.device
    k = int(num_classes or getattr(dataset, "num_classes", 1))
    use_amp = dev.type == "cuda" if amp is None else bool(amp)
    cl = True if channels_last is None else bool(channels_last)
    inputs = _inputs or Inputs(getattr(dataset, "in_channels", 3), dev, cl, normalize)
    model.to(dev)
    if cl and _inputs is None:
        model.to(memory_format=torch.channels_last)
    model.eval()
    loss_fn = make_loss(loss, k)
    metrics = SegmentationMetrics(k, device=dev)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        pin_memory=dev.type == "cuda")
    for image, mask in loader:
        x, y = inputs(image, mask)
        with autocast(dev, use_amp):
            logits = logits_of(model(x), tuple(y.shape[-2:]))
        value = loss_fn(logits, y)
        if not torch.isfinite(value):
            raise TrainingDiverged(f"validation loss is {float(value)}: the model produces "
                                   "non-finite outputs")
        check_classes(logits, k)
        metrics.update(logits, y, float(value))
    return metrics.compute()

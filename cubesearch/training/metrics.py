"""The paper's segmentation metrics, computed over a whole set (never averaged per batch).

A confusion matrix (rows: true class, columns: predicted class) is accumulated over every
valid pixel of every batch; the figures come from it at the end:

- binary (1 output channel with a sigmoid, or 2 with a softmax), for the building class 1:
  `oa = (TP+TN)/N`, `precision = TP/(TP+FP)`, `recall = TP/(TP+FN)`,
  `f1 = 2TP/(2TP+FP+FN)`, `iou = TP/(TP+FP+FN)`; plus `miou` (mean of background and
  building IoU) and the counts `tp`, `fp`, `fn`, `tn`;
- K > 2 classes (softmax): `iou_per_class`, `iou = miou` (mean over the classes that occur
  in the targets or the predictions), macro `precision`, `recall`, `f1`, and `oa`.

A ratio with a zero denominator is 0 (as scikit-learn's `zero_division=0`). Pixels whose
target is `ignore_index` (255) are left out. `loss` is the mean of the batch losses weighted
by batch size.
"""

from __future__ import annotations

import torch

from cubesearch.training.data.transforms import IGNORE_INDEX

__all__ = ["SegmentationMetrics", "metrics_from_confusion", "predict_classes"]


def predict_classes(logits: torch.Tensor) -> torch.Tensor:
    """(B, K, H, W) logits → (B, H, W) class indices: logit > 0 for K = 1, argmax otherwise."""
    if logits.shape[1] == 1:
        return (logits[:, 0] > 0).long()
    return logits.argmax(1)


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else 0.0


def metrics_from_confusion(confusion: torch.Tensor) -> dict:
    """The metrics of a (K, K) confusion matrix, rows = truth, columns = prediction."""
    c = confusion.detach().to("cpu", torch.float64)
    k = c.shape[0]
    total = float(c.sum())
    diag = torch.diagonal(c)
    out: dict = {"oa": _ratio(diag.sum(), total), "pixels": int(total)}
    per_class = []
    precisions, recalls, f1s = [], [], []
    for i in range(k):
        tp = float(c[i, i])
        fp = float(c[:, i].sum()) - tp
        fn = float(c[i, :].sum()) - tp
        per_class.append(_ratio(tp, tp + fp + fn))
        precisions.append(_ratio(tp, tp + fp))
        recalls.append(_ratio(tp, tp + fn))
        f1s.append(_ratio(2 * tp, 2 * tp + fp + fn))
    present = [i for i in range(k) if float(c[i, :].sum()) + float(c[:, i].sum()) > 0]
    miou = sum(per_class[i] for i in present) / len(present) if present else 0.0
    if k == 2:
        tp, fp, fn, tn = (int(c[1, 1]), int(c[0, 1]), int(c[1, 0]), int(c[0, 0]))
        out.update(precision=precisions[1], recall=recalls[1], f1=f1s[1], iou=per_class[1],
                   miou=miou, iou_background=per_class[0], tp=tp, fp=fp, fn=fn, tn=tn)
    else:
        out.update(precision=sum(precisions[i] for i in present) / max(len(present), 1),
                   recall=sum(recalls[i] for i in present) / max(len(present), 1),
                   f1=sum(f1s[i] for i in present) / max(len(present), 1),
                   iou=miou, miou=miou, iou_per_class=per_class)
    return out


class SegmentationMetrics:
    """Accumulates a confusion matrix (and the loss) over batches; `compute()` gives the dict.

    `num_classes` is the model's output channels: 1 (binary, sigmoid) or K ≥ 2 (softmax).
    """

    def __init__(self, num_classes: int = 1, ignore_index: int = IGNORE_INDEX,
                 device: torch.device | str | None = None) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be ≥ 1, not {num_classes}")
        self.num_classes = int(num_classes)
        self.k = max(2, self.num_classes)
        self.ignore_index = ignore_index
        self.confusion = torch.zeros(self.k, self.k, dtype=torch.int64, device=device)
        self.loss_sum = 0.0
        self.loss_count = 0

    def reset(self) -> None:
        self.confusion.zero_()
        self.loss_sum, self.loss_count = 0.0, 0

    @torch.no_grad()
    def update(self, logits: torch.Tensor, target: torch.Tensor, loss: float | None = None) -> None:
        """`logits` (B, K, H, W); `target` (B, H, W) class indices (or (B, 1, H, W))."""
        if target.dim() == 4:
            target = target[:, 0]
        self.update_predictions(predict_classes(logits), target)
        if loss is not None:
            self.add_loss(float(loss), int(target.shape[0]))

    @torch.no_grad()
    def update_predictions(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add (B, H, W) predicted and true class indices."""
        target = target.long()
        pred = pred.long()
        if self.confusion.device != pred.device:
            self.confusion = self.confusion.to(pred.device)
        valid = target != self.ignore_index
        if not bool(valid.all()):
            target, pred = target[valid], pred[valid]
        if target.numel() and int(target.max()) >= self.k:
            raise ValueError(f"target class {int(target.max())} ≥ {self.k} classes")
        idx = (target * self.k + pred).reshape(-1)
        self.confusion += torch.bincount(idx, minlength=self.k * self.k).view(self.k, self.k)

    def add_loss(self, loss: float, count: int = 1) -> None:
        self.loss_sum += float(loss) * count
        self.loss_count += count

    def compute(self) -> dict:
        out = metrics_from_confusion(self.confusion)
        out["loss"] = self.loss_sum / self.loss_count if self.loss_count else float("nan")
        return out

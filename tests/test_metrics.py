"""Metrics against hand-computed confusion matrices."""

from __future__ import annotations

import pytest
import torch

from cubesearch.training.metrics import SegmentationMetrics, metrics_from_confusion, predict_classes


def logits_for(pred: torch.Tensor) -> torch.Tensor:
    """(B, H, W) 0/1 predictions → (B, 1, H, W) logits of the right sign."""
    return (pred.float() * 2 - 1)[:, None] * 3.0


def test_binary_counts_and_formulas_on_a_hand_made_case():
    # 4×4 image: truth has 6 building pixels; the prediction hits 4, misses 2, adds 3.
    target = torch.tensor([[[1, 1, 0, 0],
                            [1, 1, 0, 0],
                            [1, 1, 0, 0],
                            [0, 0, 0, 0]]])
    pred = torch.tensor([[[1, 1, 1, 0],
                          [1, 1, 1, 0],
                          [0, 0, 1, 0],
                          [0, 0, 0, 0]]])
    m = SegmentationMetrics(1)
    m.update(logits_for(pred), target, loss=0.5)
    r = m.compute()
    tp, fp, fn, tn = 4, 3, 2, 7
    assert (r["tp"], r["fp"], r["fn"], r["tn"]) == (tp, fp, fn, tn)
    assert r["oa"] == pytest.approx((tp + tn) / 16)
    assert r["precision"] == pytest.approx(4 / 7)
    assert r["recall"] == pytest.approx(4 / 6)
    assert r["f1"] == pytest.approx(2 * 4 / (2 * 4 + 3 + 2))
    assert r["iou"] == pytest.approx(4 / 9)
    assert r["iou_background"] == pytest.approx(7 / 12)
    assert r["miou"] == pytest.approx((4 / 9 + 7 / 12) / 2)
    assert r["loss"] == pytest.approx(0.5)
    assert r["pixels"] == 16


def test_whole_set_not_batch_average():
    # batch 1: perfect on 1 building pixel; batch 2: 1 TP, 9 FP → per-batch mean IoU 0.55,
    # whole-set IoU 2 / 11.
    t1 = torch.zeros(1, 4, 4, dtype=torch.long)
    t1[0, 0, 0] = 1
    p1 = t1.clone()
    t2 = torch.zeros(1, 4, 4, dtype=torch.long)
    t2[0, 0, 0] = 1
    p2 = torch.zeros(1, 4, 4, dtype=torch.long)
    p2.view(-1)[:10] = 1
    m = SegmentationMetrics(1)
    m.update(logits_for(p1), t1, loss=1.0)
    m.update(logits_for(p2), t2, loss=4.0)
    r = m.compute()
    assert r["iou"] == pytest.approx(2 / 11)
    assert r["iou"] != pytest.approx((1.0 + 0.1) / 2)
    assert r["loss"] == pytest.approx(2.5)  # weighted by batch size (1 and 1)
    whole = SegmentationMetrics(1)
    whole.update(logits_for(torch.cat([p1, p2])), torch.cat([t1, t2]))
    assert whole.compute()["iou"] == pytest.approx(r["iou"])


def test_loss_is_weighted_by_batch_size():
    m = SegmentationMetrics(1)
    m.update(torch.zeros(3, 1, 2, 2), torch.zeros(3, 2, 2, dtype=torch.long), loss=1.0)
    m.update(torch.zeros(1, 1, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long), loss=5.0)
    assert m.compute()["loss"] == pytest.approx((3 * 1.0 + 5.0) / 4)


def test_sigmoid_and_two_class_softmax_agree():
    g = torch.Generator().manual_seed(0)
    logit = torch.randn(2, 1, 8, 8, generator=g)
    target = (torch.rand(2, 8, 8, generator=g) > 0.6).long()
    one = SegmentationMetrics(1)
    one.update(logit, target)
    two = SegmentationMetrics(2)
    two.update(torch.cat([torch.zeros_like(logit), logit], 1), target)
    a, b = one.compute(), two.compute()
    for key in ("oa", "precision", "recall", "f1", "iou", "tp", "fp", "fn", "tn"):
        assert a[key] == pytest.approx(b[key])


def test_ignored_pixels_are_left_out():
    target = torch.tensor([[[1, 255], [0, 255]]])
    pred = torch.tensor([[[1, 1], [1, 0]]])
    m = SegmentationMetrics(1)
    m.update(logits_for(pred), target)
    r = m.compute()
    assert (r["tp"], r["fp"], r["fn"], r["tn"], r["pixels"]) == (1, 1, 0, 0, 2)


def test_multiclass_per_class_iou_and_macro_figures():
    # confusion (rows = truth, cols = prediction) built pixel by pixel
    conf = torch.tensor([[5, 1, 0],
                         [2, 6, 1],
                         [0, 1, 4]])
    target, pred = [], []
    for i in range(3):
        for j in range(3):
            target += [i] * int(conf[i, j])
            pred += [j] * int(conf[i, j])
    target = torch.tensor(target).view(1, 1, -1)
    pred_t = torch.tensor(pred).view(1, 1, -1)
    logits = torch.nn.functional.one_hot(pred_t, 3).permute(0, 3, 1, 2).float()
    m = SegmentationMetrics(3)
    m.update(logits, target)
    r = m.compute()
    iou = [5 / (6 + 7 - 5), 6 / (9 + 8 - 6), 4 / (5 + 5 - 4)]
    assert r["iou_per_class"] == pytest.approx(iou)
    assert r["miou"] == pytest.approx(sum(iou) / 3) and r["iou"] == r["miou"]
    assert r["oa"] == pytest.approx(15 / 20)
    precision = [5 / 7, 6 / 8, 4 / 5]
    recall = [5 / 6, 6 / 9, 4 / 5]
    assert r["precision"] == pytest.approx(sum(precision) / 3)
    assert r["recall"] == pytest.approx(sum(recall) / 3)
    f1 = [2 * p * q / (p + q) for p, q in zip(precision, recall, strict=True)]
    assert r["f1"] == pytest.approx(sum(f1) / 3)
    assert torch.equal(m.confusion, conf)


def test_absent_class_is_left_out_of_miou():
    conf = torch.tensor([[4, 0, 0], [0, 2, 0], [0, 0, 0]])
    r = metrics_from_confusion(conf)
    assert r["iou_per_class"] == [1.0, 1.0, 0.0]
    assert r["miou"] == pytest.approx(1.0)


def test_zero_denominators_give_zero():
    m = SegmentationMetrics(1)
    m.update(torch.full((1, 1, 3, 3), -5.0), torch.zeros(1, 3, 3, dtype=torch.long))
    r = m.compute()
    assert r["precision"] == 0.0 and r["recall"] == 0.0 and r["f1"] == 0.0 and r["iou"] == 0.0
    assert r["oa"] == 1.0
    assert SegmentationMetrics(1).compute()["oa"] == 0.0


def test_predict_classes_thresholds_logits_at_zero():
    logits = torch.tensor([[[[-0.1, 0.0, 0.1]]]])
    assert predict_classes(logits).tolist() == [[[0, 0, 1]]]


def test_reset_and_bad_classes():
    m = SegmentationMetrics(1)
    m.update(torch.ones(1, 1, 2, 2), torch.ones(1, 2, 2, dtype=torch.long), loss=1.0)
    m.reset()
    assert int(m.confusion.sum()) == 0 and m.loss_count == 0
    with pytest.raises(ValueError, match="target class 3"):
        m.update(torch.ones(1, 1, 2, 2), torch.full((1, 2, 2), 3))
    with pytest.raises(ValueError):
        SegmentationMetrics(0)

"""Your own training code as the search's evaluator: a plain PyTorch loop.

    cubesearch search tests/assets/tiny_seg.py --budget 90% --trials 4 \\
        --evaluator examples/evaluator.py:evaluate --input-size 3x64x64 --tile-size 32

For every plan within budget, cubesearch builds the converted model, warm-starts it from the
trained baseline and distils its Cube blocks (as its own trainer would), then calls
`evaluate(model, trial)`. Train the model in place however you like (here: a few epochs of
binary cross-entropy on the synthetic tiles) and return its figures: `iou` is required, any other
number (f1, loss, …) is recorded with the trial. cubesearch then measures the FLOPs, saves the
checkpoint (so `cubesearch export` works) and records the trial; an exception, or no `iou`, is a
failed trial with that reason. The same function works from Python:
`cubesearch.search(model, budget, evaluator=evaluate)`.

The model was warm-started from a baseline that saw images scaled to [0, 1] and normalised with
`cubesearch.training.data.transforms.normalization`; feed it the same way.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from cubesearch.search import TrialInfo
from cubesearch.training.data import make_datasets
from cubesearch.training.data.transforms import normalization

EPOCHS = 1
LR = 5e-4


def _inputs(image: torch.Tensor, channels: int) -> torch.Tensor:
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in normalization(channels))
    return (image.float() / 255 - mean) / std


def evaluate(model: nn.Module, trial: TrialInfo) -> dict[str, float]:
    s = trial.settings
    # Your pipeline brings its own data; here the same synthetic tiles the search's baseline saw.
    train_set, val_set = make_datasets(s.data, size=s.tile_size, train_tiles=s.train_tiles,
                                       val_tiles=s.val_tiles, seed=s.seed)
    torch.manual_seed(trial.seed)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    model.train()
    loss = torch.tensor(0.0)
    for _ in range(EPOCHS):
        for image, mask in DataLoader(train_set, batch_size=s.batch_size, shuffle=True, drop_last=True):
            logits = model(_inputs(image, s.input_size[0]))[:, 0]
            loss = F.binary_cross_entropy_with_logits(logits, mask.float())
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    inter = union = 0
    with torch.no_grad():
        for image, mask in DataLoader(val_set, batch_size=s.batch_size):
            valid = mask != 255  # the ignore label
            pred = (model(_inputs(image, s.input_size[0]))[:, 0] > 0) & valid
            truth = (mask == 1) & valid
            inter += int((pred & truth).sum())
            union += int((pred | truth).sum())
    return {"iou": inter / max(union, 1), "loss": loss.item()}

"""`cubesearch.train`: train and evaluate a segmentation model (the search scores every trial
with it, users train the winner with it).

- Model: an `nn.Module`, a model spec (`timm:…`, `smp:ARCH:ENCODER`, `model.py`), optionally
  converted by a `Plan`, or a converted / exported checkpoint folder (`resolve.py`).
- Settings: a validated `TrainConfig` (`config.py`); `train(model, **options)` builds one.
- Data: `"synthetic"` (embedded), a dataset folder, or a (train, val) pair of datasets.
- Task: binary (1 output channel, sigmoid, BCE by default) or K ≥ 2 classes (softmax, CE);
  Dice or BCE+Dice optional (`losses.py`). Optimiser and schedule by name from two tables
  (`optim.py`): Adam (the paper's), AdamW or SGD; linear warmup then cosine (or linear,
  constant) decay.
- Budget: `epochs` (fractions allowed) or `steps`. Deterministic under `seed` (model init,
  data order and augmentations); AMP (bf16, else fp16 with a scaler) and channels_last on CUDA,
  channels_last on CPU too (1.7× faster for smp U-Nets here) (`inputs.py`).
- Loop (`loop.py`): optimiser steps; evaluation, history and the progress bar are callbacks
  (`callbacks.py`), and so are the caller's own (`train(..., callbacks=[...])`).
- Metrics (`cubesearch.training.metrics`, `evaluation.py`): OA, precision, recall, F1, IoU of the
  building class over the whole validation set, and the loss. A NaN/inf loss stops the run with
  `TrainingDiverged`.
- Warm start (`init_from`, `warmstart.py`): every tensor whose name and shape match is loaded
  (strict=False) and the counts are reported; with `distill_steps`, each replaced site is first
  fitted to reproduce the output of the conv it replaces (`distillation.py`).
- Checkpoint (`out`): `cubesearch.plan.checkpoint.save` → safetensors + plan + metrics JSON.

`trainer.py` ties them: resolve → data → warm start and distil → fit → report.
"""

from cubesearch.core.helpers import resolve_device as pick_device
from cubesearch.training.callbacks import (
    Callback,
    Deadline,
    DeadlineReached,
    Evaluation,
    History,
    ProgressBar,
)
from cubesearch.training.config import DEFAULT_BATCH, DEFAULT_EPOCHS, DEFAULT_LR, TrainConfig
from cubesearch.training.distillation import distill
from cubesearch.training.evaluation import evaluate
from cubesearch.training.inputs import Inputs
from cubesearch.training.loop import FitState, fit
from cubesearch.training.losses import LOSSES, TrainingDiverged, logits_of, make_loss
from cubesearch.training.optim import (
    OPTIMIZERS,
    SCHEDULERS,
    cosine,
    create_optimizer,
    create_scheduler,
    param_groups,
)
from cubesearch.training.resolve import resolve_model
from cubesearch.training.trainer import TrainResult, train
from cubesearch.training.warmstart import load_init, warm_source

__all__ = ["DEFAULT_BATCH", "DEFAULT_EPOCHS", "DEFAULT_LR", "LOSSES", "OPTIMIZERS", "SCHEDULERS",
           "Callback", "Deadline", "DeadlineReached", "Evaluation", "FitState", "History", "Inputs",
           "ProgressBar", "TrainConfig",
           "TrainResult", "TrainingDiverged", "cosine", "create_optimizer", "create_scheduler", "distill",
           "evaluate", "fit", "load_init", "logits_of", "make_loss", "param_groups", "pick_device",
           "resolve_model", "train", "warm_source"]

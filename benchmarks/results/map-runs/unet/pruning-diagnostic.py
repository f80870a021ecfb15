"""Why does a uniformly pruned examples/unet.py w16 collapse to IoU 0 under the final recipe?
Per-epoch lr, train loss, val IoU, val recall/precision of the pruning-0.875 plan, seed 0."""
import json
import sys
from pathlib import Path

from cubesearch.plan.plan import Plan
from cubesearch.training.data import make_datasets
from cubesearch.training.finetune import Recipe, train_final

out = Path("/work/ev2-runs/unet")
plans = {p["id"]: p for p in json.loads((out / "plans.json").read_text())}
base = next((out / "baselines").iterdir())
pid = sys.argv[1] if len(sys.argv) > 1 else "pruning-0.875"
lr = float(sys.argv[2]) if len(sys.argv) > 2 else 5e-4
p = plans[pid]
plan = Plan(model="examples/unet.py", model_kwargs={"width": 16}, input_size=(3, 256, 256),
            sites=p["sites"], widths=p["widths"])
data = make_datasets("synthetic", size=64, train_tiles=192, val_tiles=48, seed=0)
recipe = Recipe(epochs=5, distill_steps=50, patience=None, lr=lr)
r = train_final(plan, base, recipe=recipe, seed=0, data=data, input_size=(3, 64, 64), batch_size=8,
                progress=False)
for h in r.history:
    print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in h.items()
           if k in ("epoch", "lr", "train_loss", "train_iou", "val_iou", "val_recall", "val_precision",
                    "val_loss")})
print("init", r.init if hasattr(r, "init") else None)

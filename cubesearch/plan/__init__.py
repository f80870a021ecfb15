"""Steps 2–3, model → sites → plan → converted model: find every eligible conv (`sites/`, FX /
torch.export), the options a space allows there (`space.py`, `spaces/*.yaml`, `width.py`), a plan
choosing one per site (`plan.py`), its application to the model (`conversion.py`), and a converted
model on disk (`checkpoint.py`). `cubesearch.plan.Plan` reads through to `plan.py`."""

from cubesearch.core.names import delegate

__getattr__ = delegate("cubesearch.plan.plan")

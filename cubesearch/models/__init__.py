"""Step 1, spec → model: one string names a model everywhere (`load.py`: timm, smp, a user's
`model.py`, an importable factory), user code runs only when trusted (`trust.py`), and fvcore
counts its FLOPs (`flops.py`). `cubesearch.models.load_model` reads through to `load.py`."""

from cubesearch.core.names import delegate

__getattr__ = delegate("cubesearch.models.load")

"""Step 7, a finished study → models to ship: `export.py` (safetensors + ONNX + card + plot),
`finetuning.py` (train an exported model on), `calibration.py` (train a study's plans by the final
recipe). `cubesearch.exporting.export` reads through to `export.py`."""

from cubesearch.core.names import delegate

__getattr__ = delegate("cubesearch.exporting.export")

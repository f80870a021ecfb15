"""One-shot evaluation: a supernet that holds every plan of a search space in one set of
weights, trained once from the baseline, that scores any plan in about a second.

- `elastic`: `ElasticSite`, the conv-or-any-Cube-block module (what is shared, and why).
- `supernet`: `Supernet` / `build_supernet`: set_plan, extract, save / load.
- `train`: local distillation at sampled configurations, then sandwich-rule end-to-end training
  with in-place distillation; checkpointed every epoch, resumable after a kill.
- `score`: set the path, re-estimate the BatchNorms the plan changes, evaluate IoU, restore.
"""

from cubesearch.supernet.elastic import ElasticSite, ElasticUnit, fusion_slice
from cubesearch.supernet.supernet import Supernet, build_supernet

__all__ = ["ElasticSite", "ElasticUnit", "Supernet", "build_supernet", "fusion_slice"]

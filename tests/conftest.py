import os
import tempfile
import warnings
from pathlib import Path

import pytest
import torch

os.environ.setdefault("CUBESEARCH_NO_PROGRESS", "1")
# Model files the tests' own runs use are recorded here, not in the user's home (cubesearch.models.trust).
os.environ.setdefault("CUBESEARCH_TRUST_STORE",
                      os.path.join(tempfile.mkdtemp(prefix="cubesearch-trust-"), "trusted.json"))
warnings.filterwarnings("ignore", category=FutureWarning)
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory):
    """A finished tiny search (6 trials, baseline and FullCube enqueued, 32 px tiles): what
    export, finetune and calibrate read. Shared by the session: copy it before writing to it."""
    from cubesearch.search import search

    out = tmp_path_factory.mktemp("search")
    result = search(str(Path(__file__).parent / "assets" / "tiny_seg.py"), "100%", out=str(out),
                    space="shared", trials=6, sampler="random", input_size=(3, 64, 64), tile_size=32,
                    train_tiles=16, val_tiles=8, batch_size=8, epochs_per_trial=1.0, progress=False,
                    strategy="trials")
    return out, result

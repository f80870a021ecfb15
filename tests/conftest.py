import os
import tempfile
import warnings

import pytest
import torch

os.environ.setdefault("CUBESEARCH_NO_PROGRESS", "1")
# Model files the tests' own runs use are recorded here, not in the user's home (cubesearch.trust).
os.environ.setdefault("CUBESEARCH_TRUST_STORE",
                      os.path.join(tempfile.mkdtemp(prefix="cubesearch-trust-"), "trusted.json"))
warnings.filterwarnings("ignore", category=FutureWarning)
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)

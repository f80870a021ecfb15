import os
import warnings

import pytest
import torch

os.environ.setdefault("CUBESEARCH_NO_PROGRESS", "1")
warnings.filterwarnings("ignore", category=FutureWarning)
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)

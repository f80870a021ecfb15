"""The thread count cubesearch chooses: option, environment, default; bad values in one line."""

import os

import pytest
import torch

from cubesearch.cli import main
from cubesearch.core.errors import CubesearchError
from cubesearch.core.threads import THREADS_ENV, apply_threads, default_threads, resolve_threads


@pytest.fixture
def clean_env(monkeypatch):
    for var in (THREADS_ENV, "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    before = torch.get_num_threads()
    yield monkeypatch
    torch.set_num_threads(before)


def test_default_leaves_one_core(clean_env):
    assert default_threads(1) == 1
    assert default_threads(2) == 1
    assert default_threads(16) == 15
    assert resolve_threads() == (default_threads(), "default (cores - 1)")


def test_option_beats_environment_beats_default(clean_env):
    clean_env.setenv("OMP_NUM_THREADS", "3")
    assert resolve_threads() == (3, "$OMP_NUM_THREADS")
    clean_env.setenv(THREADS_ENV, "2")
    assert resolve_threads() == (2, f"${THREADS_ENV}")
    assert resolve_threads("1") == (1, "--threads")
    assert resolve_threads("auto") == (2, f"${THREADS_ENV}")


def test_apply_sets_torch_and_the_environment_children_inherit(clean_env):
    assert apply_threads(1) == 1
    assert torch.get_num_threads() == 1
    assert os.environ["OMP_NUM_THREADS"] == os.environ[THREADS_ENV] == "1"


@pytest.mark.parametrize("bad", ["0", "-2", "two"])
def test_bad_threads_is_one_error_line(clean_env, capsys, bad):
    with pytest.raises(CubesearchError, match="--threads: expected a positive number"):
        resolve_threads(bad)
    assert main(["--threads", bad, "sites", "--help"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: --threads: expected a positive number of threads or 'auto', got {bad!r}"]

"""The regroup by data-flow step kept every 0.1.0 module path importable (cubesearch.core.names)."""

from __future__ import annotations

import importlib
import warnings

import pytest

import cubesearch
from cubesearch.core.names import MOVED, new_name


def test_an_old_path_is_the_module_that_holds_it_now_with_a_warning():
    real = importlib.import_module("cubesearch.plan.sites.find")
    moved = r"cubesearch\.sites\.find moved to cubesearch\.plan\.sites\.find"
    with pytest.warns(DeprecationWarning, match=moved):
        old = importlib.import_module("cubesearch.sites.find")
    assert old is real
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from cubesearch.conversion import convert
    assert convert is cubesearch.convert


def test_every_moved_path_names_a_module_that_exists():
    for old, new in MOVED.items():
        assert importlib.util.find_spec(f"cubesearch.{new}") is not None, old
        assert new_name(f"cubesearch.{old}") == f"cubesearch.{new}"
    assert new_name("cubesearch.search.driver") is None  # did not move
    assert new_name("cubesearchx.sites") is None


def test_a_package_reads_through_to_the_module_it_grew_out_of():
    from cubesearch.cost import CostModel
    from cubesearch.cost.pricing import CostModel as real
    from cubesearch.models import load_model
    from cubesearch.plan import Plan

    assert CostModel is real
    assert load_model is cubesearch.load_model and Plan is cubesearch.Plan
    with pytest.raises(AttributeError):
        cubesearch.cost.no_such_name  # noqa: B018


def test_the_top_of_the_package_reads_as_the_data_flow():
    from pathlib import Path

    top = sorted(p.name for p in Path(cubesearch.__file__).parent.iterdir() if p.name != "__pycache__")
    assert len(top) <= 12, top

"""docs/hooks.py: the generated SUMMARY.md (literate-nav's nav file) is not published as a page."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("mkdocs", reason="the docs extra")


def test_the_nav_file_is_dropped_after_literate_nav_read_it():
    from mkdocs.structure.files import File, Files

    spec = importlib.util.spec_from_file_location("hooks", Path(__file__).parent.parent / "docs" / "hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    files = Files([File(name, "docs", "site", use_directory_urls=True)
                   for name in ("index.md", "benchmarks/SUMMARY.md", "benchmarks/fidelity.md")])
    kept = hooks.on_files(files, config=None)
    assert sorted(f.src_uri for f in kept) == ["benchmarks/fidelity.md", "index.md"]
    assert hooks.on_files.mkdocs_priority == -200  # after literate-nav's -100

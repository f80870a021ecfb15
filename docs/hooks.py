"""MkDocs hooks. The generated `benchmarks/SUMMARY.md` is literate-nav's navigation file, not a
page: once literate-nav has read it, it is dropped, so the site has no stray "SUMMARY" page."""

from __future__ import annotations

from typing import Any

from mkdocs.plugins import event_priority


@event_priority(-200)  # after literate-nav's on_files (-100), which reads the nav files
def on_files(files: Any, config: Any) -> Any:
    for file in [f for f in files if f.src_uri.rsplit("/", 1)[-1] == "SUMMARY.md"]:
        files.remove(file)
    return files

"""Moved: the search's latency hooks live in the search package, `cubesearch.search.limits`
(the budget and the latency model a search loads) and `cubesearch.search.objectives.latency`
(the latency objective). `cubesearch.cost.latency` is the library below the search."""

raise ImportError("cubesearch.cost.latency.search moved: use cubesearch.search.limits (setup, "
                  "load_latency) and cubesearch.search.objectives.latency (estimate_ms, measure_ms)")

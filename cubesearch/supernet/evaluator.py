"""Moved: the supernet evaluator is a search plug-in, `cubesearch.search.evaluators.supernet`
(also `from cubesearch.search import SupernetEvaluator`). `cubesearch.supernet` is the library
below the search and knows nothing of trials."""

raise ImportError("cubesearch.supernet.evaluator moved to cubesearch.search.evaluators.supernet: "
                  "use `from cubesearch.search import SupernetEvaluator`")

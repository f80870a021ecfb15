"""Step 4, what a plan costs: FLOPs and parameters from the sites alone, equal to fvcore
(`pricing.py`), budgets (`budget.py`), measured latency (`latency/`, `deploy.py`), and the
`convert` command's report (`report.py`). `cubesearch.cost.CostModel` reads through to `pricing.py`."""

from cubesearch.core.names import delegate

__getattr__ = delegate("cubesearch.cost.pricing")

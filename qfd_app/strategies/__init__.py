"""Strategies: which bit-widths, codecs and resources each device gets every round.

`registry` finds every strategy module of this package; `planner` turns the devices'
states and a strategy's rules into the round's plan (no Flower); `base.EdgeStrategy`
is the one Flower strategy that queries, plans, trains, decodes and books with any of
them; `averaging` decodes, clips and averages the updates. Importing this package loads
neither Flower nor torch.
"""

from qfd_app.strategies.registry import (
    Strategy,
    get_strategy,
    strategies,
    strategy_names,
)

__all__ = ["Strategy", "get_strategy", "strategies", "strategy_names"]

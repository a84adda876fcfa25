"""A stand-in for a part's runner (runtime/backends/base.py Runner): the gate tests feed it engineered outputs."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


class FixedRunner:
    """A part that answers every feed with the same outputs."""

    def __init__(self, outputs: Mapping[str, np.ndarray]) -> None:
        self.outputs = dict(outputs)

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.outputs

"""The benchmark's case tables: batch B, channels d, positions N and dtype of each timed configuration."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

__all__ = ["CASES", "GPU_CASES", "GPU_QUICK_CASES", "QUICK_CASES", "RANK_CASES", "Case"]


@dataclass(frozen=True)
class Case:
    """One benchmark configuration: batch B, channels d, positions N, dtype name."""

    batch: int
    dim: int
    positions: int
    dtype: str

    def __str__(self) -> str:
        return f"B={self.batch} d={self.dim} N={self.positions} {self.dtype}"


#: The CPU table (docs/benchmarks.md).
CASES: list[Case] = [Case(b, d, n, t) for t, b, d, n in
                     itertools.product(("float64", "float32"), (8, 32), (64, 128, 256), (196, 784))]
QUICK_CASES: list[Case] = [Case(8, 64, 196, "float64"), Case(8, 128, 784, "float64"), Case(8, 64, 196, "float32")]

#: Rank-aware cases (eigpool.gram): more channels than positions, as in the original FGVC scripts (2048 ResNet-50
#: channels over a 14 x 14 map, N = 196); float32 features, every method computing in float64.
RANK_CASES: list[Case] = [Case(4, 1024, 196, "float32"), Case(4, 2048, 196, "float32")]

#: The GPU table (``python -m eigpool.validation.bench.gpu``): d = 256, the iSQRT-COV training sizes.
GPU_CASES: list[Case] = [Case(b, 256, n, t) for t, b, n in
                         itertools.product(("float32", "float64"), (32, 64), (196, 784))]
#: Tiny cases of the GPU check's ``--quick`` mode (exercises the code path, on a CPU too).
GPU_QUICK_CASES: list[Case] = [Case(2, 8, 12, "float32"), Case(2, 8, 12, "float64")]

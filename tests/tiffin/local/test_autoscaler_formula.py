"""The HPA formula the local autoscaler applies to an active component."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from tiffin.local.autoscaler import desired_replicas


def test_examples_from_the_issue() -> None:
    assert desired_replicas(100, 4, 0, 3) == 3  # 25 wanted, capped at max
    assert desired_replicas(12, 4, 0, 5) == 3
    assert desired_replicas(13, 4, 0, 5) == 4  # ceil, never round down under load
    assert desired_replicas(0, 4, 0, 5) == 1  # active with nothing measured yet: activation means one
    assert desired_replicas(0, 4, 2, 5) == 2  # min_replicas holds


@given(
    metric=st.floats(min_value=0, max_value=1e6),
    target=st.floats(min_value=0.1, max_value=1e4),
    bounds=st.tuples(st.integers(0, 50), st.integers(1, 50)).filter(lambda b: b[0] <= b[1]),
)
def test_result_is_ceil_of_metric_over_target_within_the_bounds(
    metric: float, target: float, bounds: tuple[int, int]
) -> None:
    low, high = bounds
    got = desired_replicas(metric, target, low, high)
    assert max(1, low) <= got <= high
    if max(1, low) < got < high:
        assert got == math.ceil(metric / target - 1e-9)

"""runtime._errors: transport errors to Ray's, and task failures as values."""

from __future__ import annotations

import pickle

import pytest
from ray.exceptions import RayCgraphCapacityExceeded, RayChannelError, RayChannelTimeoutError, RayTaskError

from raycg.runtime import _errors
from raycg.transports import ChannelBroken, ChannelClosed, ChannelTimeout, SlotPinned


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (ChannelClosed("c"), RayChannelError),
        (ChannelBroken("b"), RayChannelError),
        (ChannelTimeout("t"), RayChannelTimeoutError),
        (SlotPinned("p", reader_index=0, seq=3, description="numpy.ndarray"), RayCgraphCapacityExceeded),
    ],
)
def test_transport_errors_map_to_rays(error: Exception, expected: type) -> None:
    mapped = _errors.to_ray_error(error, "get on graph g")  # type: ignore[arg-type]
    assert type(mapped) is expected
    assert "get on graph g" in str(mapped)


def test_timeout_is_also_a_timeout_error() -> None:
    assert isinstance(_errors.to_ray_error(ChannelTimeout("t"), "get"), TimeoutError)


def test_task_error_is_a_value_that_raises_as_its_cause() -> None:
    try:
        {}["missing"]
    except KeyError as e:
        value = _errors.wrap_task_error(e, "Adder.add", "Adder(a)")
    value = pickle.loads(pickle.dumps(value))  # it crosses a channel
    assert isinstance(value, RayTaskError)
    with pytest.raises(KeyError) as info:
        _errors.raise_if_task_error(value)
    assert isinstance(info.value, RayTaskError)
    assert "Adder.add" in str(info.value)
    assert _errors.raise_if_task_error(42) == 42

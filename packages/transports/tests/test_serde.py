"""Values to a pickle stream plus raw out-of-band buffers, and back."""

from __future__ import annotations

import pickle
import subprocess
import sys
import threading

import numpy as np
import pytest

from raycg.transports import ValueNotSerializable
from raycg.transports._serde import decode, describe, encode


def round_trip(value: object) -> object:
    meta, raws = encode(value)
    return decode(meta, [bytearray(r) for r in raws])  # as the reader's copy path does


@pytest.mark.parametrize(
    "value", [None, 0, 2**80, "s", b"b", [1, (2, {"3": 4.5})], {1, 2}, 1j, bytearray(b"ba")]
)
def test_plain_values_round_trip(value: object) -> None:
    assert round_trip(value) == value


def test_arrays_travel_out_of_band_without_a_copy() -> None:
    a = np.arange(1000, dtype=np.float64)
    meta, raws = encode({"a": a, "f": np.asfortranarray(a.reshape(10, 100))})
    assert len(raws) == 2 and len(meta) < 1000  # the data is not in the stream
    assert np.shares_memory(np.frombuffer(raws[0], dtype=np.float64), a)
    got = decode(meta, [bytearray(r) for r in raws])
    np.testing.assert_array_equal(got["a"], a)
    assert got["f"].flags.f_contiguous


@pytest.mark.parametrize(
    "value",
    [
        np.arange(12, dtype=np.float64).reshape(3, 4),
        np.arange(6, dtype=">i4"),  # byte order is kept
        np.array(3.5),  # 0-d
        np.array([1 + 2j, 3j]),
        np.array(["ab", "c"]),
        np.array([True, False]),
    ],
    ids=["2d", "big-endian", "0d", "complex", "unicode", "bool"],
)
def test_plain_array_skips_pickle(value: np.ndarray) -> None:
    meta, raws = encode(value)
    assert meta[:1] == b"N" and len(raws) == 1 and raws[0].nbytes == value.nbytes
    got = decode(meta, [bytearray(r) for r in raws])
    assert type(got) is np.ndarray and got.dtype == value.dtype and got.shape == value.shape
    np.testing.assert_array_equal(got, value)
    got = decode(meta, [raws[0].toreadonly()])  # as a zero-copy read sees it
    assert not got.flags.writeable and np.shares_memory(got, value)


@pytest.mark.parametrize(
    "value",
    [
        np.array([1, "x"], dtype=object),
        np.zeros(3, dtype=[("a", "<i4"), ("b", "<f8")]),
        np.zeros(3, dtype="datetime64[ns]"),  # no buffer format: numpy's pickling
        np.asfortranarray(np.ones((3, 4))),
        np.ma.masked_array([1, 2]),  # a subclass
        np.zeros((0, 5), dtype=np.int16),  # empty: memoryview cannot cast it
    ],
    ids=["object", "structured", "datetime", "fortran", "subclass", "empty"],
)
def test_other_arrays_go_through_pickle(value: np.ndarray) -> None:
    meta, raws = encode(value)
    assert meta[:1] == b"\x80"
    got = decode(meta, [bytearray(r) for r in raws])
    assert type(got) is type(value)
    np.testing.assert_array_equal(got, value)


def test_non_contiguous_array_goes_in_band() -> None:
    a = np.arange(100)[::3]
    meta, raws = encode(a)
    assert raws == []
    np.testing.assert_array_equal(decode(meta, []), a)


def test_torch_tensors_round_trip() -> None:
    torch = pytest.importorskip("torch")
    cases = [
        torch.arange(12, dtype=torch.bfloat16).reshape(3, 4),
        torch.arange(12, dtype=torch.float32).reshape(3, 4).t(),  # non-contiguous
        torch.tensor(3, dtype=torch.int16),  # 0-d
        torch.empty(0, 2),
        torch.tensor([True, False]),
    ]
    for t in cases:
        meta, raws = encode(t)
        assert len(raws) == 1  # out of band, through a numpy view of its bytes
        got = decode(meta, [bytearray(r) for r in raws])
        assert type(got) is torch.Tensor and got.dtype == t.dtype and got.shape == t.shape
        assert torch.equal(got, t)


def test_plain_tensor_skips_pickle() -> None:
    torch = pytest.importorskip("torch")
    for t in (torch.arange(12, dtype=torch.float32).reshape(3, 4), torch.tensor(7, dtype=torch.int64)):
        meta, raws = encode(t)
        assert meta[:1] == b"T" and len(raws) == 1
        got = decode(meta, [raws[0].toreadonly()])  # as a zero-copy read sees it
        assert type(got) is torch.Tensor and got.dtype == t.dtype and got.shape == t.shape
        assert torch.equal(got, t) and got.data_ptr() == t.data_ptr()  # no copy
    for t in (
        torch.ones(2, dtype=torch.bfloat16),  # numpy has no bfloat16
        torch.ones(2, 3).t(),  # non-contiguous
        torch.ones(2, dtype=torch.complex64).conj(),  # a conjugate view
        torch.ones(0, 3),  # empty
    ):
        meta, raws = encode(t)
        assert meta[:1] == b"\x80"  # the reducer's path
        assert torch.equal(decode(meta, [bytearray(r) for r in raws]), t)


def test_tensors_that_need_torch_pickling_still_round_trip() -> None:
    torch = pytest.importorskip("torch")
    t = torch.ones(3, requires_grad=True)  # autograd state: torch's own reduction
    got = round_trip(t)
    assert isinstance(got, torch.Tensor) and got.requires_grad and torch.equal(got, t)


@pytest.mark.parametrize(
    ("value", "named"),
    [
        (lambda: 1, "builtins.function"),
        (threading.Lock(), "_thread.lock"),
        ([threading.Lock()], "builtins.list"),
    ],
)
def test_unserializable_value_is_named(value: object, named: str) -> None:
    with pytest.raises(ValueNotSerializable, match=named) as err:
        encode(value)
    assert isinstance(err.value, TypeError)
    assert err.value.__cause__ is not None  # pickle's own reason is kept


def test_non_contiguous_pickle_buffer_is_not_serializable() -> None:
    buf = pickle.PickleBuffer(memoryview(bytearray(100))[::2])
    with pytest.raises(ValueNotSerializable):
        encode(buf)


def test_describe() -> None:
    a = np.zeros((2, 3), dtype=np.int8)
    assert describe(a) == "numpy.ndarray(shape=(2, 3), dtype=int8)"
    assert describe({"x": 1, "y": [None, a]}) == "numpy.ndarray(shape=(2, 3), dtype=int8)"
    assert describe("text") == "builtins.str"
    assert describe([[[]]]) == "builtins.list"


def test_describe_tensor() -> None:
    torch = pytest.importorskip("torch")
    assert (
        describe((torch.zeros(4, 5, dtype=torch.bfloat16),))
        == "torch.Tensor(shape=(4, 5), dtype=torch.bfloat16)"
    )


def test_the_package_imports_neither_torch_nor_ray() -> None:
    code = (
        "import sys, numpy as np, raycg.transports as t\n"
        "from raycg.transports._serde import encode\n"
        "encode({'a': np.zeros(3)})\n"
        "bad = sorted(m for m in ('torch', 'ray') if m in sys.modules)\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)

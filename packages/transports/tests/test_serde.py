"""Values to a pickle stream plus raw out-of-band buffers, and back."""

from __future__ import annotations

import pickle
import subprocess
import sys
import threading
import warnings

import numpy as np
import pytest

from raycg.transports import ValueNotSerializable
from raycg.transports._serde import decode, describe, encode, holds_tensors


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


def _all_dtypes() -> list[object]:
    torch = pytest.importorskip("torch")
    names = [
        "bool", "uint8", "int8", "int16", "int32", "int64", "uint16", "uint32", "uint64",
        "float16", "bfloat16", "float32", "float64", "complex32", "complex64", "complex128",
        "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu",
    ]  # fmt: skip
    return [getattr(torch, n) for n in names if hasattr(torch, n)]


def _sample(torch: object, dtype: object, shape: tuple[int, ...]) -> object:
    """A tensor of ``dtype`` with varied bytes (for dtypes torch has few ops for)."""
    import torch as t

    size = t.empty((), dtype=dtype).element_size()
    n = 1
    for d in shape:
        n *= d
    raw = (t.arange(n * size, dtype=t.int64) * 37 % 251).to(t.uint8)
    if dtype == t.bool:
        raw = raw % 2
    return raw.view(dtype).reshape(shape)


def _same(got: object, want: object) -> bool:
    import torch

    assert isinstance(got, torch.Tensor) and isinstance(want, torch.Tensor)
    if (got.dtype, got.shape) != (want.dtype, want.shape):
        return False
    flat = want.detach().resolve_conj().resolve_neg().contiguous().reshape(-1)
    return torch.equal(got.reshape(-1).view(torch.uint8), flat.view(torch.uint8))


@pytest.mark.parametrize("shape", [(), (0,), (3, 0), (5,), (4, 6)])
@pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental")
def test_every_dtype_and_shape_round_trips(shape: tuple[int, ...]) -> None:
    torch = pytest.importorskip("torch")
    for dtype in _all_dtypes():
        t = _sample(torch, dtype, shape)
        for value in (t, [t], {"k": (t,)}):
            meta, raws = encode(value)
            for bufs in ([bytearray(r) for r in raws], [memoryview(r).toreadonly() for r in raws]):
                got = decode(meta, bufs)
                while not isinstance(got, torch.Tensor):
                    got = got["k"][0] if isinstance(got, dict) else got[0]
                assert _same(got, t), (dtype, shape, type(value))
                assert got.is_contiguous() and not got.requires_grad


def test_odd_tensors_arrive_equal_contiguous_and_without_grad() -> None:
    torch = pytest.importorskip("torch")
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    cases = {
        "transposed": base.t(),
        "strided": base[:, ::2],
        "expanded": torch.tensor([1.0, 2.0]).expand(3, 2),
        "requires_grad": torch.ones(3, requires_grad=True) * 2,  # a non-leaf with grad_fn
        "leaf_grad": torch.ones(3, requires_grad=True),
        "conj": torch.tensor([1 + 2j, 3 - 4j]).conj(),
        "neg": torch.tensor([1 + 2j]).conj().imag,  # a lazy negative view
        "bf16_t": torch.arange(6, dtype=torch.bfloat16).reshape(2, 3).t(),
    }
    for name, t in cases.items():
        meta, raws = encode(t)
        assert meta[:1] == b"T" and len(raws) == 1, name  # no pickle, bytes out of band
        got = decode(meta, [bytearray(r) for r in raws])
        assert type(got) is torch.Tensor, name
        assert torch.equal(got, t.detach().resolve_conj().resolve_neg()), name
        assert got.is_contiguous() and not got.requires_grad, name


def test_tensors_at_any_depth_are_out_of_band_in_one_pickle() -> None:
    torch = pytest.importorskip("torch")
    ts = [torch.full((1000,), float(i)) for i in range(5)]
    value = {"a": (ts[0], [ts[1], {"deep": [(ts[2],)]}]), "b": [ts[3]], "c": (1, "x", ts[4]), "n": np.ones(3)}
    meta, raws = encode(value)
    assert meta[:1] == b"W" and holds_tensors(meta)
    assert len(raws) == 6 and sum(r.nbytes for r in raws) == 5 * 4000 + 24  # bytes out of band
    got = decode(meta, [bytearray(r) for r in raws])
    assert torch.equal(got["a"][1][1]["deep"][0][0], ts[2]) and torch.equal(got["c"][2], ts[4])
    assert got["c"][:2] == (1, "x") and np.array_equal(got["n"], np.ones(3))


def test_holds_tensors_only_for_values_with_tensors() -> None:
    torch = pytest.importorskip("torch")
    assert holds_tensors(encode(torch.ones(2))[0]) and holds_tensors(encode([torch.ones(2)])[0])
    for value in (np.ones(3), [np.ones(3)], {"a": 1}, 5):
        assert not holds_tensors(encode(value)[0])


def test_tensor_over_a_writable_buffer_is_zero_copy() -> None:
    torch = pytest.importorskip("torch")
    t = torch.arange(12, dtype=torch.float32)
    meta, raws = encode(t)
    buf = bytearray(raws[0])
    got = decode(meta, [buf])
    assert got.data_ptr() == np.frombuffer(buf, dtype=np.uint8).ctypes.data  # a view of buf
    meta, raws = encode(t)
    assert decode(meta, [raws[0]]).data_ptr() == t.data_ptr()  # no copy on the way


def test_tensor_over_a_read_only_buffer_is_a_private_copy() -> None:
    # torch has no read-only tensors: a view of read-only memory could be written
    # through by an in-place op. The decoder copies instead, and torch does not warn.
    torch = pytest.importorskip("torch")
    t = torch.arange(12, dtype=torch.float32)
    meta, raws = encode(t)
    shared = bytearray(raws[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = decode(meta, [memoryview(shared).toreadonly()])
    got.add_(1)  # changes the copy only
    assert torch.equal(torch.frombuffer(shared, dtype=torch.float32), t)
    assert torch.equal(got, t + 1)


def test_arrays_over_read_only_buffers_stay_read_only() -> None:
    meta, raws = encode(np.arange(10))
    got = decode(meta, [memoryview(bytearray(raws[0])).toreadonly()])
    assert not got.flags.writeable
    with pytest.raises(ValueError, match="WRITEABLE"):
        got.flags.writeable = True


def test_tensors_that_torch_must_pickle_still_round_trip() -> None:
    torch = pytest.importorskip("torch")
    p = torch.nn.Parameter(torch.ones(3))  # a subclass: torch's own reduction
    got = round_trip(p)
    assert isinstance(got, torch.nn.Parameter) and got.requires_grad and torch.equal(got, p)
    s = torch.eye(3).to_sparse()
    assert torch.equal(round_trip(s).to_dense(), torch.eye(3))


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

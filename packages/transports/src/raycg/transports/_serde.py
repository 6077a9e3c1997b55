"""Values to bytes and back: pickle protocol 5 with out-of-band buffers.

``encode`` splits a value into a small pickle stream (``meta``) and the raw buffers of
the large objects in it (numpy arrays, CPU torch tensors), without copying them. The
channel copies both into a slot once; ``decode`` rebuilds the value with its buffers
pointing straight into the slot, so a reader gets arrays without a copy.

A plain numpy array (C-contiguous, no objects, no fields) skips pickle: its ``meta`` is
``b"N"`` and a marshal of ``(dtype.str, shape)``, about 0.6 µs to write and read where
pickle's protocol 5 takes about 6 µs (numpy reduces and rebuilds through Python). A
CPU torch tensor on its own does the same with ``b"T"`` and ``(dtype name, shape)``;
inside tuples, lists, dicts or any object, pickle's walk (one pass) reduces each
tensor to the same out-of-band bytes, and the stream is tagged ``b"W"``. A pickle
stream starts with PROTO (0x80), so the first byte tells them apart.

Tensors of every dtype (bool, bfloat16, float8 kinds, complex, every int), 0-d, empty,
non-contiguous (made contiguous, one copy) and requiring grad (detached: values travel,
autograd state does not) arrive equal: same dtype, shape and values, contiguous, no
grad. Sparse, quantized and non-CPU tensors and tensor subclasses go through torch's
own reducers.

Read-only memory. A zero-copy array is a read-only view of the slot. torch has no
read-only tensors, so a tensor is decoded over its buffer only when that buffer is
writable and the reader's own (a copy, or the ring's copy-on-write view of its slot,
see _tensor_cow); :func:`holds_tensors` tells the reader which values need that.

torch is optional: tensors are recognised only when torch is already imported by the
user's code (this module never imports it to encode).
"""

from __future__ import annotations

import importlib
import io
import marshal
import pickle
import sys
from typing import Any

from ._errors import ValueNotSerializable

# torch dtypes by name, and names by dtype (str(dtype) costs ~1 µs).
_TORCH_DTYPES: dict[str, Any] = {}
_TORCH_NAMES: dict[Any, str] = {}


def _torch_dtype_name(dtype: Any) -> str:
    name = _TORCH_NAMES.get(dtype)
    if name is None:
        name = _TORCH_NAMES[dtype] = str(dtype).removeprefix("torch.")
    return name


_EMPTY = b""  # an empty tensor's bytes


def _tensor_bytes(t: Any, torch: Any) -> Any:
    """The bytes of CPU tensor ``t`` as a flat uint8 numpy array, with no copy where
    ``t`` is contiguous already: values only (no autograd state), lazy conj/neg views
    materialized, any dtype (a uint8 view needs none of numpy's dtypes)."""
    try:
        # The common case in two calls, as an array's: numpy() refuses a tensor that
        # requires grad, has a lazy conj/neg bit, or has a dtype numpy lacks.
        arr = t.numpy()
    except (RuntimeError, TypeError):
        return _tensor_bytes_slow(t, torch)
    if not arr.flags.c_contiguous:
        return _tensor_bytes_slow(t, torch)
    return arr.reshape(-1).view("u1")  # no copy: contiguous


def _tensor_bytes_slow(t: Any, torch: Any) -> Any:
    t = t.detach()
    if t.is_conj():
        t = t.resolve_conj()
    if t.is_neg():
        t = t.resolve_neg()
    if not t.numel():
        return _EMPTY
    flat = t.contiguous().reshape(-1)
    if flat.stride(0) != 1:  # only one element: "contiguous" with any stride
        flat = flat.as_strided((1,), (1,))
    return flat.view(torch.uint8).numpy()


def _is_plain_tensor(obj: Any, torch: Any) -> bool:
    """A CPU, strided tensor whose bytes are its value (not sparse, quantized, meta)."""
    return (
        type(obj) is torch.Tensor
        and obj.device.type == "cpu"
        and obj.layout is torch.strided
        and not obj.is_quantized
    )


def _rebuild_tensor(buf: Any, dtype_name: str, shape: tuple[int, ...]) -> Any:
    """The tensor ``_tensor_bytes`` gave ``buf`` for: contiguous, no grad, over ``buf``.

    torch has no read-only tensors, so a tensor is built over ``buf`` only if the
    buffer is writable (a private copy, or the ring's copy-on-write view of its slot:
    _tensor_cow); over a read-only buffer it gets a copy, so that no in-place op can
    ever write into memory another reader sees.
    """
    torch = sys.modules.get("torch") or importlib.import_module("torch")
    dtype = _TORCH_DTYPES.get(dtype_name)
    if dtype is None:
        dtype = _TORCH_DTYPES[dtype_name] = getattr(torch, dtype_name)
    view = memoryview(buf)
    if not view.nbytes:
        return torch.empty(shape, dtype=dtype)
    if view.readonly:
        buf = bytearray(view)
    t = torch.frombuffer(buf, dtype=dtype)
    return t if len(shape) == 1 else t.view(shape)


class _Pickler(pickle.Pickler):
    """pickle with plain CPU tensors reduced to their bytes, out-of-band (at any depth:
    pickle walks tuples, lists and dicts once). ``saw_tensor`` says whether it met one."""

    saw_tensor = False

    def reducer_override(self, obj: Any) -> Any:
        torch = sys.modules.get("torch")
        if torch is not None and _is_plain_tensor(obj, torch):
            self.saw_tensor = True
            raw = _tensor_bytes(obj, torch)
            return (
                _rebuild_tensor,
                (pickle.PickleBuffer(raw), _torch_dtype_name(obj.dtype), tuple(obj.shape)),
            )
        return NotImplemented


_PLAIN_TYPES = frozenset({type(None), bool, int, float, complex, str, bytes, bytearray})


def _is_ndarray(value: object) -> bool:
    # numpy is imported lazily: a process that moves only plain values never loads it
    # (an actor's first compile is then ~40 ms faster).
    np = sys.modules.get("numpy")
    return np is not None and type(value) is np.ndarray


# str(dtype) is slow (~1 µs); a description is made for every zero-copy read.
_DTYPE_NAMES: dict[object, str] = {}


def _dtype_name(dtype: object) -> str:
    name = _DTYPE_NAMES.get(dtype)
    if name is None:
        name = _DTYPE_NAMES[dtype] = str(dtype)
    return name


_RAW_ARRAY = ord("N")


def _encode_array(value: Any) -> tuple[bytes, list[memoryview]] | None:
    """A plain array's header and its bytes, or None for one pickle must handle."""
    dtype = value.dtype
    if dtype.hasobject or dtype.fields is not None:
        return None
    try:
        raw = memoryview(value).cast("B")  # refuses a non-C-contiguous array
    except (TypeError, ValueError, BufferError):  # ... and dtypes with no buffer format
        return None
    return b"N" + marshal.dumps((dtype.str, value.shape)), [raw]


_RAW_TENSOR = ord("T")
# A pickle stream with tensors in it: the reader must decode it over writable memory
# of its own (see _rebuild_tensor), so it is tagged. Any other stream starts with PROTO.
_TENSOR_PICKLE = ord("W")


def _encode_tensor(value: Any, torch: Any) -> tuple[bytes, list[memoryview]]:
    """A plain CPU tensor's header (dtype name, shape) and its bytes."""
    raw = _tensor_bytes(value, torch)
    header = marshal.dumps((_torch_dtype_name(value.dtype), tuple(value.shape)))
    return b"T" + header, [memoryview(raw).cast("B") if len(raw) else memoryview(raw)]


def holds_tensors(meta: Any) -> bool:
    """Whether the value ``meta`` describes holds torch tensors (then its buffers must
    be given to :func:`decode` writable and private to this reader, or be copied)."""
    return meta[0] in (_RAW_TENSOR, _TENSOR_PICKLE)


def encode(value: object) -> tuple[bytes, list[memoryview]]:
    """Serialize ``value`` into a ``meta`` stream and its out-of-band buffers, each a
    flat byte view of the object's memory (no copy).

    Raises:
        ValueNotSerializable: naming the value's type and why pickle refused it.
    """
    if type(value) in _PLAIN_TYPES:
        # Fastest path: nothing out-of-band can come of a plain value.
        return pickle.dumps(value, protocol=5), []
    if _is_ndarray(value):
        encoded = _encode_array(value)
        if encoded is not None:
            return encoded
    torch = sys.modules.get("torch")
    if torch is not None and _is_plain_tensor(value, torch):
        return _encode_tensor(value, torch)
    buffers: list[pickle.PickleBuffer] = []
    try:
        if torch is None or _is_ndarray(value):
            # Fast path: the C pickler without a reducer_override hook.
            meta = pickle.dumps(value, protocol=5, buffer_callback=buffers.append)
        else:
            f = io.BytesIO()
            pickler = _Pickler(f, protocol=5, buffer_callback=buffers.append)
            pickler.dump(value)
            meta = b"W" + f.getvalue() if pickler.saw_tensor else f.getvalue()
        # raw() refuses a non-contiguous buffer (a user's own PickleBuffer may be one).
        return meta, [b.raw() for b in buffers]
    except Exception as e:
        raise ValueNotSerializable(
            f"cannot serialize a value of type {type(value).__module__}.{type(value).__qualname__}: "
            f"{type(e).__name__}: {e}. Return a picklable value (or register a copyreg reducer)."
        ) from e


def decode(meta: Any, buffers: list[Any]) -> object:
    """The value ``encode`` gave ``meta`` for, its buffers now ``buffers`` (views of a
    slot, or copies). Arrays are views of their buffers (read-only where the buffers
    are); tensors are views of writable buffers and copies of read-only ones."""
    tag = meta[0]
    if tag == _RAW_ARRAY:
        dtype, shape = marshal.loads(meta[1:])
        # numpy is loaded already, unless this is the first array this process receives.
        np = sys.modules.get("numpy") or importlib.import_module("numpy")
        return np.frombuffer(buffers[0], dtype=dtype).reshape(shape)
    if tag == _RAW_TENSOR:
        return _rebuild_tensor(buffers[0], *marshal.loads(meta[1:]))
    if tag == _TENSOR_PICKLE:
        return pickle.loads(meta[1:], buffers=buffers)
    return pickle.loads(meta, buffers=buffers)


def describe(value: object) -> str:
    """A short description of the (first) zero-copy object inside ``value``."""
    np = sys.modules.get("numpy")
    seen = 0
    stack = [value]
    while stack and seen < 64:
        v = stack.pop()
        seen += 1
        if np is not None and isinstance(v, np.ndarray):
            return f"numpy.ndarray(shape={v.shape}, dtype={_dtype_name(v.dtype)})"
        torch = sys.modules.get("torch")
        if torch is not None and isinstance(v, torch.Tensor):
            return f"torch.Tensor(shape={tuple(v.shape)}, dtype={_dtype_name(v.dtype)})"
        if isinstance(v, (list, tuple)):
            stack.extend(reversed(v))
        elif isinstance(v, dict):
            stack.extend(reversed(list(v.values())))
    return f"{type(value).__module__}.{type(value).__qualname__}"

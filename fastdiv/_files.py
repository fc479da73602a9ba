"""Arrays in files, read in row chunks without loading them whole: ``.npy``, ``.npz``, safetensors.

:func:`open_rows` opens ``PATH`` or ``PATH:NAME`` (an array inside an ``.npz`` or safetensors
file) as a :class:`RowSource`: its shape, dtype, and ``read(r0, r1)`` giving rows ``r0:r1`` of
the array seen as ``(rows, *row_shape)``.

* ``.npy`` files, uncompressed ``.npz`` members (``np.savez``) and safetensors tensors are
  memory-mapped one chunk at a time: ``read`` maps just the rows asked for, so only those
  pages are read, and resident memory does not grow with the file.
* Compressed ``.npz`` members (``np.savez_compressed``) cannot be mapped; they are decompressed
  as a stream, in order, one chunk at a time (``read`` must then be called with increasing,
  adjacent ranges, which is what the chunk loop does).
* safetensors is read with this module's own parser of the format (an 8-byte little-endian
  header length, a JSON header of ``{name: {dtype, shape, data_offsets}}``, then the raw
  little-endian data), so the ``safetensors`` package is not needed.

Errors are :class:`FileFormatError` (a ``ValueError``) with a message naming the file.
"""
from __future__ import annotations

import json
import os
import struct
import zipfile
from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import _checks

__all__ = ["FileFormatError", "RowSource", "open_rows"]


class FileFormatError(ValueError):
    """A file that is missing, unreadable, or not an array this command can read."""


@dataclass
class RowSource:
    """An on-disk array seen as ``rows`` rows of shape ``row_shape``."""

    label: str                    # the file (and member) name, for messages
    shape: tuple                  # the array's shape as stored
    dtype: np.dtype
    row_shape: tuple              # () for targets, (V,) for logits
    read: Callable[[int, int], np.ndarray]

    @property
    def rows(self) -> int:
        lead = self.shape[: len(self.shape) - len(self.row_shape)]
        return int(np.prod(lead, dtype=np.int64))

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize


_SAFETENSORS_DTYPES = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
    "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?",
}


def _split_spec(spec):
    """``PATH`` or ``PATH:NAME`` -> (path, name or None); a path that exists wins."""
    if os.path.exists(spec) or ":" not in spec:
        return spec, None
    path, name = spec.rsplit(":", 1)
    return path, (name or None)


def _pick(label, names, name, role):
    """The member to read: the one named, the only one, or the one called like the option."""
    if name is not None:
        if name not in names:
            raise FileFormatError(f"{label} has no array named {name!r}; it holds: {', '.join(sorted(names))}")
        return name
    if len(names) == 1:
        return names[0]
    for candidate in (role, role.rstrip("s"), role + "s"):
        if candidate in names:
            return candidate
    raise FileFormatError(f"{label} holds several arrays ({', '.join(sorted(names))}); "
                          f"name one as {label}:NAME")


def _mapped(path, label, offset, shape, dtype, fortran, row_ndim):
    """A :class:`RowSource` over the array of ``shape``/``dtype`` at byte ``offset`` of ``path``.

    C-order data is mapped one chunk at a time (each ``read`` maps just rows ``r0:r1``, and the
    mapping goes when the chunk is dropped), so the process's resident memory stays at about
    one chunk however large the file.  Fortran order with one leading axis maps the whole
    array and reads strided rows (the kernels copy them in blocks).
    """
    shape = tuple(int(d) for d in shape)
    if len(shape) < row_ndim:
        raise FileFormatError(f"{label} has shape {shape}; expected at least {row_ndim} dimension(s)")
    row_shape = shape[len(shape) - row_ndim:]
    row_bytes = int(np.prod(row_shape, dtype=np.int64)) * dtype.itemsize
    if int(np.prod(shape, dtype=np.int64)) == 0:
        empty = np.empty(shape, dtype).reshape((-1, *row_shape))
        return RowSource(label, shape, dtype, row_shape, lambda r0, r1: empty[r0:r1])
    if not fortran or len(shape) == 1:
        def read(r0, r1):
            return np.memmap(path, dtype=dtype, mode="r", offset=offset + r0 * row_bytes, shape=(r1 - r0, *row_shape))

        return RowSource(label, shape, dtype, row_shape, read)
    if len(shape) - row_ndim != 1:
        raise FileFormatError(f"{label} is stored in Fortran order with {len(shape)} dimensions; its rows cannot be "
                              "read in chunks without loading it whole: save it in C order")
    whole = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F")
    return RowSource(label, shape, dtype, row_shape, lambda r0, r1: whole[r0:r1])


def _npy_header(fp, label):
    try:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
    except Exception as exc:
        raise FileFormatError(f"{label} is not a valid .npy array ({exc})") from None
    if dtype.hasobject:
        raise FileFormatError(f"{label} holds Python objects (dtype {dtype}); expected a numeric array")
    return shape, fortran, dtype


def _npy_mapped(path, label, offset, row_ndim):
    """The .npy array starting at byte ``offset`` of ``path``, memory-mapped."""
    with open(path, "rb") as f:
        f.seek(offset)
        shape, fortran, dtype = _npy_header(f, label)
        data = f.tell()
    return _mapped(path, label, data, shape, np.dtype(dtype), fortran, row_ndim)


def _npz(path, name, row_ndim, role):
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise FileFormatError(f"{path} is not a valid .npz (zip) file") from None
    with zf:
        members = {n[:-4]: n for n in zf.namelist() if n.endswith(".npy")}
        key = _pick(path, list(members), name, role)
        info = zf.getinfo(members[key])
    label = f"{path}:{key}"
    if info.compress_type == zipfile.ZIP_STORED:
        with open(path, "rb") as f:                  # the member's data follows its local header
            f.seek(info.header_offset)
            head = f.read(30)
            if head[:4] != b"PK\x03\x04":
                raise FileFormatError(f"{label}: corrupt zip local header")
            name_len, extra_len = struct.unpack("<HH", head[26:30])
        return _npy_mapped(path, label, info.header_offset + 30 + name_len + extra_len, row_ndim)
    return _npz_stream(path, members[key], label, row_ndim)


def _npz_stream(path, member, label, row_ndim):
    """A compressed member, decompressed in order, one chunk at a time."""
    zf = zipfile.ZipFile(path)
    fp = zf.open(member)
    shape, fortran, dtype = _npy_header(fp, label)
    if fortran and len(shape) > 1:
        fp.close()
        zf.close()
        raise FileFormatError(f"{label} is compressed and stored in Fortran order: its rows cannot be streamed; "
                              "save it with np.savez (uncompressed) or in C order")
    row_shape = tuple(shape[len(shape) - row_ndim:])
    row_items = int(np.prod(row_shape, dtype=np.int64))
    rows = int(np.prod(shape[:len(shape) - row_ndim], dtype=np.int64))
    state = {"next": 0}

    def read(r0, r1):
        if r0 != state["next"]:
            raise RuntimeError(f"{label}: a compressed member is read in order (asked rows {r0}:{r1})")
        nbytes = (r1 - r0) * row_items * dtype.itemsize
        buf = fp.read(nbytes)
        if len(buf) != nbytes:
            raise FileFormatError(f"{label} is truncated")
        state["next"] = r1
        if r1 == rows:
            fp.close()
            zf.close()
        return np.frombuffer(buf, dtype=dtype).reshape((r1 - r0, *row_shape))

    return RowSource(label, tuple(shape), np.dtype(dtype), row_shape, read)


def _safetensors(path, name, row_ndim, role):
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise FileFormatError(f"{path} is too short to be a safetensors file")
        (n,) = struct.unpack("<Q", raw)
        if n > size - 8:
            raise FileFormatError(f"{path} is not a valid safetensors file (header length {n} > file size)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise FileFormatError(f"{path} is not a valid safetensors file ({exc})") from None
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    key = _pick(path, list(tensors), name, role)
    label = f"{path}:{key}"
    entry = tensors[key]
    code = entry.get("dtype")
    if code == "BF16":
        dtype = _checks._bfloat16()
        if dtype is None:
            raise FileFormatError(f"{label} is bfloat16; reading it needs the ml_dtypes package")
    elif code in _SAFETENSORS_DTYPES:
        dtype = np.dtype(_SAFETENSORS_DTYPES[code])
    else:
        raise FileFormatError(f"{label} has safetensors dtype {code}, which is not supported")
    shape = tuple(int(d) for d in entry["shape"])
    begin, end = (int(o) for o in entry["data_offsets"])
    if end - begin != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize or 8 + n + end > size:
        raise FileFormatError(f"{label}: data_offsets {begin}..{end} do not match shape {shape} x {dtype}")
    return _mapped(path, label, 8 + n + begin, shape, dtype, False, row_ndim)


def open_rows(spec: str, *, role: str, row_ndim: int) -> RowSource:
    """Open ``spec`` (``PATH`` or ``PATH:NAME``) for row-chunked reading.

    ``row_ndim`` is 1 for logits (rows of V values) and 0 for targets (one value per row).
    The format comes from the extension: ``.npy``, ``.npz``, ``.safetensors``.

    Examples
    --------
    >>> import numpy as np, os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "x.npy")
    >>> np.save(path, np.arange(12, dtype=np.float32).reshape(2, 2, 3))
    >>> src = open_rows(path, role="logits", row_ndim=1)
    >>> src.rows, src.row_shape, src.read(1, 3).tolist()
    (4, (3,), [[3.0, 4.0, 5.0], [6.0, 7.0, 8.0]])
    """
    path, name = _split_spec(spec)
    if not os.path.exists(path):
        raise FileFormatError(f"{path}: no such file")
    if os.path.isdir(path):
        raise FileFormatError(f"{path} is a directory, not an array file")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npy":
        if name is not None:
            raise FileFormatError(f"{path} is a .npy file (one array); :{name} names a member of .npz/safetensors")
        return _npy_mapped(path, path, 0, row_ndim)
    if ext == ".npz":
        return _npz(path, name, row_ndim, role)
    if ext == ".safetensors":
        return _safetensors(path, name, row_ndim, role)
    raise FileFormatError(f"{path}: unknown file type {ext or '(no extension)'}; "
                          "expected .npy, .npz or .safetensors")

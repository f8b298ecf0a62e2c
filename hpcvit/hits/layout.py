"""Per-hit arrays as awkward's ``ak.to_buffers`` stores them: a form (JSON), a length, and named buffers.

One array per HDF5 group (the seed's storage): the group's attributes ``form`` and ``length`` and one data set
per buffer (``node0-offsets``, ``node2-data``, ...). The arrays hpcvit reads are lists of hits per event, each
hit a fixed number of numbers, stored in one of the forms awkward gives them:

- ``var * F * float`` (ListOffsetArray -> RegularArray -> NumpyArray) or a NumpyArray with ``inner_shape [F]``;
- ``var * var * float`` (ListOffsetArray -> ListOffsetArray -> NumpyArray), every inner list of length F;
- ``var * {E: float, x: float, ...}`` (ListOffsetArray -> RecordArray of NumpyArrays), one column per field;
- ``var * int`` (ListOffsetArray -> NumpyArray): one number per hit (the particle index).

:class:`Layout` reads an event range of such an array through h5py slices (bounded memory: only the range's
buffers are read); :func:`write_group` writes the same layout without needing awkward.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from hpcvit.data.store import DataError

_DTYPES = {"float32": np.float32, "float64": np.float64, "int8": np.int8, "int16": np.int16, "int32": np.int32,
           "int64": np.int64, "uint8": np.uint8, "uint16": np.uint16, "uint32": np.uint32, "uint64": np.uint64,
           "bool": np.bool_}


@dataclass(frozen=True)
class Layout:
    """How one group's buffers hold ``events x hits x width`` numbers."""

    kind: str
    """``regular`` (one data buffer, ``width`` numbers per hit), ``jagged`` (inner offsets, each list
    ``width`` long), ``record`` (one buffer per field) or ``scalar`` (one number per hit)."""
    offsets: str
    """The buffer of the per-event offsets into the hits."""
    data: tuple[str, ...]
    """The buffers of the numbers (one per field for ``record``)."""
    width: int
    fields: tuple[str, ...] = ()
    inner_offsets: str = ""
    where: str = ""

    @classmethod
    def of(cls, group: Any, where: str) -> Layout:
        """The layout of an HDF5 group written from ``ak.to_buffers``; a :class:`DataError` for anything else."""
        try:
            form = json.loads(_text(group.attrs["form"]))
            int(group.attrs["length"])
        except (KeyError, ValueError, TypeError) as exc:
            raise DataError(f"{where}: not an awkward array group (attributes 'form' and 'length': {exc})") from None
        if form.get("class") not in ("ListOffsetArray", "ListOffsetArray64") or "content" not in form:
            raise DataError(f"{where}: expected a list of hits per event (ListOffsetArray), found "
                            f"{form.get('class')!r}")
        top, content = form, form["content"]
        offsets = f"{top['form_key']}-offsets"
        cls_ = content.get("class")
        if cls_ == "NumpyArray":
            inner = content.get("inner_shape") or []
            width = int(np.prod(inner)) if inner else 1
            _check_primitive(content, where)
            return cls("regular" if inner else "scalar", offsets, (f"{content['form_key']}-data",), width, where=where)
        if cls_ == "RegularArray" and content["content"].get("class") == "NumpyArray":
            _check_primitive(content["content"], where)
            return cls("regular", offsets, (f"{content['content']['form_key']}-data",), int(content["size"]),
                       where=where)
        if cls_ in ("ListOffsetArray", "ListOffsetArray64") and content["content"].get("class") == "NumpyArray":
            _check_primitive(content["content"], where)
            return cls("jagged", offsets, (f"{content['content']['form_key']}-data",), 0,
                       inner_offsets=f"{content['form_key']}-offsets", where=where)
        if cls_ == "RecordArray":
            fields = tuple(content.get("fields") or [])
            contents = content.get("contents") or []
            if not fields or any(c.get("class") != "NumpyArray" or c.get("inner_shape") for c in contents):
                raise DataError(f"{where}: a record of hits must hold one number per field")
            for c in contents:
                _check_primitive(c, where)
            return cls("record", offsets, tuple(f"{c['form_key']}-data" for c in contents), len(fields), fields,
                       where=where)
        raise DataError(f"{where}: hits stored as {cls_!r} are not supported (a list per event of fixed-size lists, "
                        "of records or of numbers)")

    def read(self, group: Any, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Events ``start:stop``: (per-event offsets from 0, int64; numbers as float64 hits x width)."""
        off = np.asarray(group[self.offsets][start:stop + 1], dtype=np.int64)
        lo, hi = int(off[0]), int(off[-1])
        if self.kind == "scalar":
            values = np.asarray(group[self.data[0]][lo:hi], dtype=np.float64).reshape(-1, 1)
        elif self.kind == "regular":
            values = np.asarray(group[self.data[0]][lo * self.width:hi * self.width], dtype=np.float64)
            values = values.reshape(hi - lo, self.width)
        elif self.kind == "record":
            values = np.stack([np.asarray(group[d][lo:hi], dtype=np.float64) for d in self.data], axis=1)
        else:
            inner = np.asarray(group[self.inner_offsets][lo:hi + 1], dtype=np.int64)
            sizes = np.diff(inner)
            width = int(sizes[0]) if len(sizes) else 0
            if len(sizes) and (sizes != width).any():
                bad = int(np.flatnonzero(sizes != width)[0])
                event = int(np.searchsorted(off, lo + bad, side="right") - 1) + start
                raise DataError(f"{self.where} (event {event}): a hit has {int(sizes[bad])} numbers, the others "
                                f"{width}: every hit needs the same features")
            values = np.asarray(group[self.data[0]][int(inner[0]):int(inner[-1])], dtype=np.float64)
            values = values.reshape(hi - lo, width)
        return off - lo, values

    def width_of(self, group: Any) -> int:
        """Numbers per hit (read from the first hit for a jagged layout)."""
        if self.kind != "jagged":
            return self.width
        inner = group[self.inner_offsets]
        return int(inner[1] - inner[0]) if len(inner) > 1 else 0


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _check_primitive(node: dict[str, Any], where: str) -> None:
    if node.get("primitive") not in _DTYPES:
        raise DataError(f"{where}: hits of type {node.get('primitive')!r} are not numbers")


def write_group(parent: Any, name: str, offsets: np.ndarray, values: np.ndarray, **dataset_kw: Any) -> None:
    """Write ``events x hits x width`` numbers (``values`` hits x width, or hits for one number per hit) as
    ``ak.to_buffers`` of ``var * width * dtype`` (or ``var * dtype``) does: ``ak.from_buffers`` reads it back."""
    values = np.ascontiguousarray(values)
    primitive = {np.dtype(v): k for k, v in _DTYPES.items()}[values.dtype]
    leaf = {"class": "NumpyArray", "primitive": primitive, "inner_shape": [], "parameters": {}}
    if values.ndim == 2:
        leaf["form_key"] = "node2"
        content = {"class": "RegularArray", "size": int(values.shape[1]), "content": leaf, "parameters": {},
                   "form_key": "node1"}
    else:
        leaf["form_key"] = "node1"
        content = leaf
    form = {"class": "ListOffsetArray", "offsets": "i64", "content": content, "parameters": {}, "form_key": "node0"}
    group = parent.create_group(name)
    group.attrs["form"] = json.dumps(form)
    group.attrs["length"] = len(offsets) - 1
    group.create_dataset("node0-offsets", data=np.asarray(offsets, dtype=np.int64))
    group.create_dataset(f"{leaf['form_key']}-data", data=values.reshape(-1), **dataset_kw)

"""Model directory files: a streaming safetensors writer, a plain-read reader, atomic staging."""

from __future__ import annotations

import json
import shutil
import struct
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from monitor.errors import ModelError


@dataclass(frozen=True)
class TensorSource:
    """A float32 tensor to write: its shape and a generator of row chunks (memory-lean)."""

    shape: tuple[int, ...]
    chunks: Callable[[], Iterator[npt.NDArray[np.float32]]]


def zeros(shape: tuple[int, ...]) -> TensorSource:
    return TensorSource(shape, lambda: iter([np.zeros(shape, dtype=np.float32)]))


def write_safetensors(path: Path, tensors: dict[str, TensorSource]) -> None:
    """Stream tensors into a .safetensors file without holding them all in memory."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, src in tensors.items():
        size = int(np.prod(src.shape)) * 4
        header[name] = {"dtype": "F32", "shape": list(src.shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the format asks for an 8-byte aligned data section
    with path.open("wb") as fh:
        fh.write(struct.pack("<Q", len(blob)) + blob)
        for name, src in tensors.items():
            written = 0
            for chunk in src.chunks():
                data = np.ascontiguousarray(chunk, dtype="<f4")
                fh.write(data.tobytes())
                written += data.size
            if written != int(np.prod(src.shape)):
                raise ModelError(f"{path}: tensor {name} produced {written} values, "
                                 f"expected {src.shape}")


class SafetensorsReader:
    """Reads one tensor (or row range) at a time with plain reads.

    No mmap on purpose: every touched page of a mapping counts as resident memory, so
    mapping a 280 MB file to quantise it would double the peak the int8 path exists to cut.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._fh = path.open("rb")
            (size,) = struct.unpack("<Q", self._fh.read(8))
            header = json.loads(self._fh.read(size))
        except (OSError, ValueError, struct.error) as exc:
            raise ModelError(f"{path}: cannot read the weights ({exc}); delete the model "
                             "directory so it is rebuilt") from exc
        header.pop("__metadata__", None)
        self._base = 8 + size
        self._entries: dict[str, dict[str, Any]] = header

    def __enter__(self) -> SafetensorsReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self._fh.close()

    def names(self) -> list[str]:
        return list(self._entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._entry(name)["shape"])

    def read(self, name: str, start: int = 0, stop: int | None = None) -> npt.NDArray[np.float32]:
        """Rows ``start:stop`` of a float32 tensor (all of it by default)."""
        entry, shape = self._entry(name), self.shape(name)
        row = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
        stop = (shape[0] if shape else 1) if stop is None else stop
        out = np.empty(((stop - start) * row,), dtype="<f4")
        self._fh.seek(self._base + entry["data_offsets"][0] + 4 * start * row)
        if self._fh.readinto(out.data.cast("B")) != out.nbytes:
            raise ModelError(f"{self.path}: tensor {name} is truncated; delete the model "
                             "directory so it is rebuilt")
        return out.reshape((stop - start, *shape[1:]) if shape else ())

    def _entry(self, name: str) -> dict[str, Any]:
        entry = self._entries.get(name)
        if entry is None:
            raise ModelError(f"{self.path}: no tensor {name!r}; the directory does not hold "
                             "the expected model, delete it so it is rebuilt")
        if entry.get("dtype") != "F32":
            raise ModelError(f"{self.path}: tensor {name} is {entry.get('dtype')}, the int8 "
                             "loader reads F32 only; use SPILLOVER_MODEL_VARIANT=fp32")
        return entry


@contextmanager
def staging_dir(out_dir: Path) -> Iterator[Path]:
    """Build into a sibling temp dir, then swap it into place so readers never see half a model."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; a model directory is ordinary shared data
    try:
        yield tmp
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old.", dir=out_dir.parent))
            out_dir.rename(old / "model")
            tmp.rename(out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

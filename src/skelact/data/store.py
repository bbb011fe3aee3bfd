"""The on-disk skeleton store: ragged, memory-mapped, written atomically.

A store is a directory::

    meta.json    dataset, layout, dtype, shape facts, class names, split rules, skipped inputs
    index.npz    per-clip columns: name, offset, length, label, num_persons, subject, view, setup,
                 replication, split (-1 / "" where unknown)
    frames.bin   every clip's frames concatenated, raw array of shape (total_frames, M, V, C)

Clips are not padded: clip ``i`` is rows ``offset[i]:offset[i] + length[i]`` of ``frames.bin``, absent
persons are zeros. A split is a rule over one metadata column (``{"column": "subject", "train": [...]}``),
so protocols are computed from metadata, never stored as index lists. The writer builds the store in a
temporary sibling directory and renames it into place only on :meth:`StoreWriter.commit`, so a
half-written store never looks complete.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from ..errors import BadSample, SkelactError
from ..fileio import atomic_write_bytes, default_mode, fsync_dir
from ..layouts import Layout, get_layout

FORMAT = "skelact-store"
VERSION = 1
INT_COLUMNS = ("subject", "view", "setup", "replication")


def check_clip(frames: np.ndarray, layout: Layout, max_persons: int) -> np.ndarray:
    """Validate one clip of shape (M, T, V, C) or (T, V, C); return it as float32 (M, T, V, C).

    Raises :class:`BadSample` with the reason when the clip cannot go into a store.
    """
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4:
        raise BadSample(f"expected an array (T, V, C) or (M, T, V, C), got shape {frames.shape}")
    m, t, v, c = frames.shape
    if v != layout.num_joints:
        raise BadSample(f"{v} joints, layout {layout.name} has {layout.num_joints}")
    if c != layout.channels:
        raise BadSample(f"{c} channels per joint, layout {layout.name} has {layout.channels}")
    if t < 1 or m < 1:
        raise BadSample("no frames" if t < 1 else "no persons")
    if m > max_persons:
        raise BadSample(f"{m} persons, the store keeps at most {max_persons}")
    if not np.issubdtype(frames.dtype, np.number):
        raise BadSample(f"non-numeric array of dtype {frames.dtype}")
    frames = frames.astype(np.float32, copy=False)
    if not np.isfinite(frames).all():
        raise BadSample("NaN or infinite coordinates")
    return frames


def apply_split_rule(rule: dict, columns: dict[str, np.ndarray], part: str) -> np.ndarray:
    """Sorted indices selected by a split rule ``{"column", "train", "test"?}`` over metadata columns.

    ``train`` lists the column values that go to training; ``test`` defaults to every other clip.
    """
    column = columns[rule["column"]]
    in_train = np.isin(column, np.asarray(rule["train"], dtype=column.dtype))
    if part == "train":
        return np.flatnonzero(in_train)
    if "test" in rule:
        return np.flatnonzero(np.isin(column, np.asarray(rule["test"], dtype=column.dtype)))
    return np.flatnonzero(~in_train)


def _tmp_prefix(out: Path) -> str:
    """Temporary store folders are named after the host and process writing them."""
    return f".{out.name}.tmp-{socket.gethostname()}-"


def _remove_abandoned(out: Path) -> None:
    """Delete the temporary folders of earlier writes of ``out`` on this host whose process no longer
    exists (a killed ``prepare`` leaves one, possibly gigabytes); those of a live process (a concurrent
    write) or of another host (a shared file system) stay."""
    prefix = _tmp_prefix(out)
    for tmp in out.parent.glob(f"{glob.escape(prefix)}*-*"):
        pid = tmp.name[len(prefix):].split("-", 1)[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except OSError:  # exists but is another user's: not ours to judge
            pass


class StoreWriter:
    """Stream clips into a new store. Use as a context manager; call :meth:`commit` to publish.

    Memory stays flat: frames go straight to disk, only the small per-clip index is kept.
    """

    def __init__(self, out: str | os.PathLike, *, dataset: str, layout: str | Layout,
                 class_names: list[str], max_persons: int, dtype: str = "float32",
                 splits: dict[str, dict] | None = None, source: dict | None = None,
                 overwrite: bool = False):
        self.out = Path(out)
        self.layout = get_layout(layout)
        if dtype not in ("float32", "float16"):
            raise SkelactError(f"{self.out}: dtype must be float32 or float16, not {dtype!r}")
        if self.out.exists() and not overwrite and any(self.out.iterdir()):
            raise SkelactError(f"{self.out}: already exists and is not empty (use --overwrite)")
        self.meta = {
            "format": FORMAT, "version": VERSION, "dataset": dataset, "layout": self.layout.name,
            "dtype": dtype, "max_persons": int(max_persons), "num_joints": self.layout.num_joints,
            "channels": self.layout.channels, "class_names": list(class_names),
            "splits": dict(splits or {}), "source": dict(source or {}), "skipped": [],
        }
        self.out.parent.mkdir(parents=True, exist_ok=True)
        _remove_abandoned(self.out)
        self._tmp = Path(tempfile.mkdtemp(prefix=f"{_tmp_prefix(self.out)}{os.getpid()}-",
                                          dir=self.out.parent))
        os.chmod(self._tmp, default_mode(directory=True))
        self._frames = open(self._tmp / "frames.bin", "wb")
        self._dtype = np.dtype(dtype)
        self._cols: dict[str, list] = {k: [] for k in
                                       ("name", "length", "label", "num_persons", "split", *INT_COLUMNS)}
        self._extra: dict[str, list[str]] = {}  # free-form string columns, e.g. pyskl split membership
        self._names: set[str] = set()
        self._done = False

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if not self._done:
            self.abort()
        return False

    def add(self, name: str, frames: np.ndarray, label: int, *, subject: int = -1, view: int = -1,
            setup: int = -1, replication: int = -1, split: str = "", **extra: str) -> None:
        """Append one clip (M, T, V, C) or (T, V, C). Raises BadSample if it is unusable.

        ``extra`` adds string metadata columns (missing values are ""); split rules may use them.
        """
        for key in extra.keys() - self._extra.keys():
            if key in self._cols or key == "offset":
                raise ValueError(f"metadata column {key!r} is reserved")
        if name in self._names:
            raise BadSample(f"duplicate sample name {name!r}")
        if not 0 <= int(label) < len(self.meta["class_names"]):
            raise BadSample(f"label {label} outside 0..{len(self.meta['class_names']) - 1}")
        clip = check_clip(frames, self.layout, self.meta["max_persons"])
        if self._dtype == np.float16 and np.abs(clip).max() > 6.0e4:
            raise BadSample("coordinates too large for float16")
        m, t = clip.shape[:2]
        padded = np.zeros((t, self.meta["max_persons"], *clip.shape[2:]), dtype=self._dtype)
        padded[:, :m] = clip.transpose(1, 0, 2, 3)
        self._frames.write(padded.tobytes())
        self._names.add(name)
        for key, value in (("name", name), ("length", t), ("label", int(label)), ("num_persons", m),
                           ("subject", subject), ("view", view), ("setup", setup),
                           ("replication", replication), ("split", split)):
            self._cols[key].append(value)
        for key in extra.keys() - self._extra.keys():
            self._extra[key] = [""] * (len(self) - 1)
        for key, column in self._extra.items():
            column.append(str(extra.get(key, "")))

    def skip(self, name: str, reason: str) -> None:
        self.meta["skipped"].append({"name": str(name), "reason": str(reason)})

    def __len__(self) -> int:
        return len(self._cols["name"])

    def commit(self) -> Path:
        """Finish the store and move it into place atomically; returns its path."""
        if len(self) == 0:
            self.abort()
            raise SkelactError(f"{self.out}: no usable clips, store not written")
        self._frames.flush()
        os.fsync(self._frames.fileno())
        self._frames.close()
        lengths = np.asarray(self._cols["length"], dtype=np.int64)
        index = {
            "name": np.asarray(self._cols["name"], dtype=str),
            "offset": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
            "length": lengths,
            "label": np.asarray(self._cols["label"], dtype=np.int64),
            "num_persons": np.asarray(self._cols["num_persons"], dtype=np.int64),
            "split": np.asarray(self._cols["split"], dtype=str),
            **{k: np.asarray(self._cols[k], dtype=np.int64) for k in INT_COLUMNS},
            **{k: np.asarray(v, dtype=str) for k, v in self._extra.items()},
        }
        with open(self._tmp / "index.npz", "wb") as f:
            np.savez(f, **index)
            f.flush()
            os.fsync(f.fileno())
        self.meta.update(num_samples=len(self), num_classes=len(self.meta["class_names"]),
                         total_frames=int(lengths.sum()))
        atomic_write_bytes(self._tmp / "meta.json", json.dumps(self.meta, indent=1).encode())
        if self.out.exists():  # replace an old store: move it aside first, delete after the swap
            old = self.out.with_name(f".{self.out.name}.old-{os.getpid()}")
            os.replace(self.out, old)
            os.replace(self._tmp, self.out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self._tmp, self.out)
        fsync_dir(self.out.parent)
        self._done = True
        return self.out

    def abort(self) -> None:
        if not self._frames.closed:
            self._frames.close()
        shutil.rmtree(self._tmp, ignore_errors=True)
        self._done = True


class SkeletonStore:
    """Read a store. ``store.clip(i)`` returns float32 (M, T, V, C) with M = ``max_persons``."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        meta_path = self.path / "meta.json"
        if not meta_path.is_file():
            raise SkelactError(f"{self.path}: not a skelact dataset (no meta.json); "
                               f"create one with 'skelact prepare' or 'skelact import'")
        try:
            self.meta = json.loads(meta_path.read_text())
            if self.meta.get("format") != FORMAT:
                raise ValueError("unknown format")
            with np.load(self.path / "index.npz", allow_pickle=False) as z:
                self.index = {k: z[k] for k in z.files}
            shape = (self.meta["total_frames"], self.meta["max_persons"], self.meta["num_joints"],
                     self.meta["channels"])
            self.frames = np.memmap(self.path / "frames.bin", dtype=self.meta["dtype"], mode="r",
                                    shape=shape)
            self.layout = get_layout(self.meta["layout"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError, zipfile.BadZipFile, SkelactError) as e:
            raise SkelactError(f"{self.path}: corrupt dataset store ({e})") from None

    def __len__(self) -> int:
        return int(self.meta["num_samples"])

    @property
    def names(self) -> np.ndarray:
        return self.index["name"]

    @property
    def labels(self) -> np.ndarray:
        return self.index["label"]

    @property
    def class_names(self) -> list[str]:
        return list(self.meta["class_names"])

    @property
    def num_classes(self) -> int:
        return len(self.meta["class_names"])

    @property
    def max_persons(self) -> int:
        return int(self.meta["max_persons"])

    def clip(self, i: int) -> np.ndarray:
        """Frames of clip ``i`` as float32 (M, T, V, C)."""
        start, length = int(self.index["offset"][i]), int(self.index["length"][i])
        return np.asarray(self.frames[start:start + length], dtype=np.float32).transpose(1, 0, 2, 3)

    @property
    def split_names(self) -> list[str]:
        return list(self.meta["splits"])

    def split(self, name: str, part: str = "train") -> np.ndarray:
        """Sorted clip indices of ``part`` ("train" or "test") of split protocol ``name``."""
        rules = self.meta["splits"]
        if name not in rules:
            raise SkelactError(f"{self.path}: no split {name!r}; this dataset has "
                               f"{', '.join(rules) or 'none'}")
        if part not in ("train", "test"):
            raise SkelactError(f"split part must be 'train' or 'test', not {part!r}")
        return apply_split_rule(rules[name], self.index, part)

    def summary(self) -> dict:
        """The facts ``skelact info --json`` prints."""
        return {
            "path": str(self.path), "dataset": self.meta["dataset"], "num_samples": len(self),
            "num_classes": self.num_classes, "class_names": self.class_names,
            "layout": self.layout.name, "dtype": self.meta["dtype"], "max_persons": self.max_persons,
            "total_frames": int(self.meta["total_frames"]),
            "frames": {"min": int(self.index["length"].min()), "max": int(self.index["length"].max()),
                       "mean": round(float(self.index["length"].mean()), 2)},
            "splits": {n: {"train": int(self.split(n, "train").size),
                           "test": int(self.split(n, "test").size)} for n in self.split_names},
            "skipped": list(self.meta["skipped"]),
        }

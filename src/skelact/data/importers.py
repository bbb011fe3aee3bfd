"""Bring your own data: per-clip arrays (``skelact import arrays``) and pyskl pickles (``import pyskl``).

Arrays
    A folder of ``NAME.npy`` files or one ``.npz`` (key = NAME), each (T, V, C) or (M, T, V, C) with V and
    C matching the layout, plus a CSV ``name,label[,subject,view,setup,replication,split]``. Labels are
    integers (0-based) or class-name strings; class names come from a text file (one per line) if given,
    else they are the sorted distinct label strings (``class_0``.. for integer labels). Split protocols
    are derived from the metadata (see :func:`default_splits`). :func:`write_arrays` is the same for
    arrays already in memory.

pyskl
    ``{'split': {name: [frame_dir, ...]}, 'annotations': [{'frame_dir', 'label', 'keypoint' (M, T, V, C),
    'keypoint_score' (M, T, V) optional, ...}]}``. Loading a pickle can run code, so it needs
    ``trust_pickle=True``. 2-D keypoints become (x, y, score) channels. Split names ``P_train`` /
    ``P_val`` / ``P_test`` become protocol ``P`` (bare ``train`` / ``val`` / ``test`` become ``default``);
    membership is stored in a string column ``split_P``.

Every clip that cannot be used is skipped with its name and reason; with ``strict`` the first one raises
:class:`SkelactError` naming it and no store is written.
"""

from __future__ import annotations

import csv
import os
import pickle
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np

from ..errors import BadSample, SkelactError
from ..layouts import LAYOUTS, Layout, get_layout
from .store import SkeletonStore, StoreWriter

META_INT = ("subject", "view", "setup", "replication")
# joint count -> layout, and whether the layout's coordinates are 2-D (x, y, score) or 3-D (x, y, z)
_BY_JOINTS = {17: ("coco17", 2), 18: ("openpose18", 2), 20: ("ucla20", 3), 25: ("ntu25", 3)}


def _layout(layout: str | Layout | None, where: str) -> Layout:
    if layout is None:
        raise SkelactError(f"{where}: --layout is required (one of {', '.join(LAYOUTS)})")
    try:
        return get_layout(layout)
    except ValueError as e:
        raise SkelactError(f"{where}: {e}") from None


def _test_values(values: Iterable[str]) -> list[str]:
    """The test part of a train/test(/val) column: "test", or "val" when no clip is marked "test"."""
    values = set(values)
    return ["test"] if "test" in values or "val" not in values else ["val"]


def default_splits(metadata: Mapping[str, Mapping]) -> dict[str, dict]:
    """Split rules derived from per-clip metadata (``{name: {"subject": .., "view": .., "split": ..}}``).

    - ``default`` when clips have a ``split`` value: train = "train", test = "test" (or "val" when no
      clip is marked "test"); other values (e.g. "val" next to "test") are in neither part.
    - ``xsub`` when clips have subjects (at least two): train = the first half (rounded up) of the
      sorted distinct subject ids, test = the rest.
    - ``xview`` when clips have views (at least two): train = every view but the highest, test = the
      highest.
    Pass your own rules to :func:`write_arrays` for anything else.
    """
    rules = {}
    parts = [m["split"] for m in metadata.values() if m.get("split")]
    if parts:
        rules["default"] = {"column": "split", "train": ["train"], "test": _test_values(parts)}
    subjects = sorted({int(m["subject"]) for m in metadata.values() if m.get("subject", -1) >= 0})
    if len(subjects) >= 2:
        rules["xsub"] = {"column": "subject", "train": subjects[:(len(subjects) + 1) // 2]}
    views = sorted({int(m["view"]) for m in metadata.values() if m.get("view", -1) >= 0})
    if len(views) >= 2:
        rules["xview"] = {"column": "view", "train": views[:-1]}
    return rules


def _class_names_file(path: str | os.PathLike) -> list[str]:
    try:
        names = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise SkelactError(f"{path}: cannot read class names ({e})") from None
    if not names or len(set(names)) != len(names):
        raise SkelactError(f"{path}: class names must be non-empty and distinct, one per line")
    return names


def _label_indices(labels: Mapping[str, int | str], class_names: list[str] | None,
                   where: str) -> tuple[dict[str, int | str], list[str]]:
    """Map labels (ints, or class-name strings) to 0-based ints; a label that cannot be mapped is kept as
    an error string for :func:`_write` to report. Returns (labels, class_names)."""
    def as_int(v):
        return int(v) if isinstance(v, (int, np.integer)) or re.fullmatch(r"-?\d+", str(v).strip()) else None
    ints = {k: as_int(v) for k, v in labels.items()}
    if all(i is not None for i in ints.values()):
        top = max(ints.values(), default=-1)
        if class_names is None:
            class_names = [f"class_{i}" for i in range(top + 1)]
        return ints, class_names
    strings = {k: str(v).strip() for k, v in labels.items()}
    if class_names is None:
        class_names = sorted(set(strings.values()))
    lookup = {c: i for i, c in enumerate(class_names)}
    return {k: lookup.get(s, f"label {s!r} is not in the class names ({where})")
            for k, s in strings.items()}, class_names


def _write(out, items: Iterable[tuple[str, str, Callable[[], np.ndarray]]], labels: Mapping[str, int | str],
           metadata: Mapping[str, Mapping], *, layout: Layout, class_names: list[str], max_persons: int,
           splits: dict, dataset: str, source: dict, strict: bool, dtype: str, overwrite: bool) -> dict:
    """Shared writer loop. ``items`` yields (name, where, load) with ``where`` naming the clip's file for
    messages and ``load()`` returning its array or raising BadSample; ``labels[name]`` is an int or an
    error string."""
    seen = set()
    with StoreWriter(out, dataset=dataset, layout=layout, class_names=class_names, max_persons=max_persons,
                     dtype=dtype, splits=splits, source=source, overwrite=overwrite) as writer:
        def bad(name, where, reason):
            if strict:
                raise SkelactError(f"{where}: {reason}")
            writer.skip(name, reason)

        for name, where, load in items:
            seen.add(name)
            label = labels.get(name)
            try:
                if label is None:
                    raise BadSample("no label for this clip")
                if isinstance(label, str):
                    raise BadSample(label)
                meta = metadata.get(name, {})
                writer.add(name, load(), label, **{k: meta[k] for k in (*META_INT, "split") if k in meta},
                           **{k: v for k, v in meta.items() if k not in (*META_INT, "split")})
            except BadSample as e:
                bad(name, where, str(e))
        for name in sorted(labels.keys() - seen):
            bad(name, name, "listed in the labels but has no array")
        if len(writer) == 0:
            first = writer.meta["skipped"][:1]
            raise SkelactError(f"{out}: no usable clips, store not written" + "".join(
                f" (first problem: {s['name']}: {s['reason']})" for s in first))
        path = writer.commit()
    return {**SkeletonStore(path).summary(), "out": str(path)}


def write_arrays(out: str | os.PathLike, clips: Mapping[str, np.ndarray] | Iterable[tuple[str, np.ndarray]],
                 labels: Mapping[str, int | str], *, layout: str | Layout,
                 class_names: list[str] | None = None, metadata: Mapping[str, Mapping] | None = None,
                 splits: dict[str, dict] | None = None, max_persons: int | None = None,
                 dataset: str = "custom", strict: bool = False, dtype: str = "float32",
                 overwrite: bool = False) -> dict:
    """Write in-memory clips to a store; return its summary.

    ``clips``: ``{name: array (T, V, C) or (M, T, V, C)}`` (or (name, array) pairs; an array may also be
    a zero-argument function returning it, for lazy loading). ``labels``: ``{name: int or class name}``.
    ``metadata``: ``{name: {"subject": int, "view": int, "setup": int, "replication": int,
    "split": "train"|"test"|..., other: str}}``, all optional. ``splits`` defaults to
    :func:`default_splits` of the metadata. ``max_persons`` defaults to the largest M.

    Example::

        write_arrays("data/mine", {"c1": np.zeros((30, 17, 3))}, {"c1": "wave"}, layout="coco17")
    """
    lay = _layout(layout, str(out))
    metadata = dict(metadata or {})
    pairs = list(clips.items() if isinstance(clips, Mapping) else clips)
    if max_persons is None:  # needs every clip's shape: pass max_persons to spare lazy clips a load
        shapes = [np.shape(a() if callable(a) else a) for _, a in pairs]
        max_persons = max((s[0] if len(s) == 4 else 1 for s in shapes), default=1)
    labels, class_names = _label_indices(labels, class_names, "given")
    splits = default_splits(metadata) if splits is None else splits
    items = ((name, name, (a if callable(a) else (lambda a=a: a))) for name, a in pairs)
    return _write(out, items, labels, metadata, layout=lay, class_names=class_names,
                  max_persons=max(1, max_persons), splits=splits,
                  dataset=dataset, source={"source": "python"}, strict=strict, dtype=dtype,
                  overwrite=overwrite)


def read_labels_csv(path: str | os.PathLike) -> tuple[dict[str, str], dict[str, dict]]:
    """Read ``name,label[,subject,view,setup,replication,split]``; return (labels, metadata) by name.

    Problems with the file itself (missing columns, duplicate names, non-integer ids) raise
    :class:`SkelactError` with the line number.
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            rows = [(reader.line_num, row) for row in reader]  # line numbers for messages
            header = [h.strip() for h in reader.fieldnames or []]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise SkelactError(f"{path}: cannot read labels CSV ({e})") from None
    if "name" not in header or "label" not in header:
        raise SkelactError(f"{path}: the header must have columns name,label "
                           f"(optional: {', '.join(META_INT)}, split); found {','.join(header) or 'none'}")
    labels, metadata = {}, {}
    for line, row in rows:
        if None in row:
            raise SkelactError(f"{path}: line {line}: more fields than the header has columns")
        row = {k.strip(): (v or "").strip() for k, v in row.items()}
        name = row["name"]
        if not name:
            raise SkelactError(f"{path}: line {line}: empty name")
        if name in labels:
            raise SkelactError(f"{path}: line {line}: duplicate name {name!r}")
        if not row["label"]:
            raise SkelactError(f"{path}: line {line}: empty label for {name!r}")
        labels[name] = row["label"]
        meta = {}
        for key in META_INT:
            if row.get(key):
                try:
                    meta[key] = int(row[key])
                except ValueError:
                    raise SkelactError(f"{path}: line {line}: {key} must be an integer id, "
                                       f"not {row[key]!r}") from None
        if row.get("split"):
            meta["split"] = row["split"]
        metadata[name] = meta
    return labels, metadata


def _array_items(source: Path) -> tuple[list[tuple[str, str, Callable]], Callable[[], None]]:
    """(name, where, load) for every clip of a .npy folder or .npz file, and a close function.
    ``load(peek=True)`` may return a memory map (cheap, for reading the shape)."""
    def load_npy(p, peek=False):
        try:
            with open(p, "rb") as f:
                if f.read(6) != b"\x93NUMPY":
                    raise BadSample("not a .npy array file")
            return np.load(p, allow_pickle=False, mmap_mode="r" if peek else None)
        except BadSample:
            raise
        except Exception as e:  # OSError, ValueError, numpy's header parser's TokenError, ...
            raise BadSample(f"cannot read array ({type(e).__name__}: {e})") from None

    if not source.exists():
        raise SkelactError(f"{source}: does not exist")
    if source.is_dir():
        files = sorted(source.glob("*.npy"))
        if not files:
            raise SkelactError(f"{source}: no .npy files (expected one NAME.npy per clip)")
        return [(p.stem, str(p), lambda peek=False, p=p: load_npy(p, peek)) for p in files], lambda: None
    if source.suffix != ".npz" or not source.is_file():
        raise SkelactError(f"{source}: expected a folder of .npy files or an .npz file")
    try:
        z = np.load(source, allow_pickle=False)
    except Exception as e:  # zipfile, zlib, numpy's header parser: each has its own error types
        raise SkelactError(f"{source}: cannot read .npz ({type(e).__name__}: {e})") from None

    def load_key(k, peek=False):
        try:
            return z[k]
        except Exception as e:  # a damaged member: skip this clip (or fail under --strict)
            raise BadSample(f"cannot read array ({type(e).__name__}: {e})") from None
    return [(k, f"{source}[{k}]", lambda peek=False, k=k: load_key(k)) for k in z.files], z.close


def import_arrays(source: str | os.PathLike, *, layout: str | None, labels: str | os.PathLike | None = None,
                  class_names: str | os.PathLike | None = None, out: str | os.PathLike, strict: bool = False,
                  dtype: str = "float32", overwrite: bool = False) -> dict:
    """Import a folder of ``NAME.npy`` (or one ``.npz``) plus a labels CSV into a store; return its summary.

    Arrays are (T, V, C) or (M, T, V, C); the store keeps up to the largest M. See the module docstring.
    """
    source = Path(source)
    lay = _layout(layout, str(source))
    if labels is None:
        raise SkelactError(f"{source}: --labels CSV is required (columns name,label[,subject,view,split])")
    label_text, metadata = read_labels_csv(labels)
    names = _class_names_file(class_names) if class_names is not None else None
    label_ids, names = _label_indices(label_text, names, str(class_names))
    items, close = _array_items(source)
    try:
        max_persons = 1
        for name, _, load in items:  # M of every clip (.npy: reads only the header)
            if name in label_ids:
                try:
                    shape = np.shape(load(peek=True))
                except BadSample:
                    continue
                max_persons = max(max_persons, shape[0] if len(shape) == 4 else 1)
        return _write(out, items, label_ids, metadata, layout=lay, class_names=names,
                      max_persons=max_persons, splits=default_splits(metadata), dataset=source.stem,
                      source={"source": str(source), "labels": str(labels)}, strict=strict, dtype=dtype,
                      overwrite=overwrite)
    finally:
        close()


def _pyskl_splits(split: Mapping, file: Path) -> tuple[dict[str, dict[str, str]], dict[str, dict]]:
    """Turn pyskl split lists into per-clip string columns ``split_P`` and rules. Returns (extra by
    frame_dir, rules). Names that are not ``[P_](train|val|test)[N]`` are ignored."""
    columns: dict[str, dict[str, str]] = {}  # column -> frame_dir -> part
    for split_name, members in split.items():
        m = re.fullmatch(r"(?:(.+)_)?(train|val|test)(\d*)", str(split_name))
        if not m:
            continue
        proto, part, num = m.groups()
        proto = (proto + num) if proto else (f"split{num}" if num else "default")
        column = columns.setdefault(f"split_{proto}", {})
        for frame_dir in members:
            if column.get(str(frame_dir), part) != part:
                raise SkelactError(f"{file}: split {proto}: {frame_dir!r} is in both "
                                   f"{column[str(frame_dir)]} and {part}")
            column[str(frame_dir)] = part
    rules = {col[len("split_"):]: {"column": col, "train": ["train"], "test": _test_values(parts.values())}
             for col, parts in columns.items()}
    extra: dict[str, dict[str, str]] = {}
    for col, parts in columns.items():
        for frame_dir, part in parts.items():
            extra.setdefault(frame_dir, {})[col] = part
    return extra, rules


def _kp_shape(ann) -> tuple:
    """Shape of an annotation's keypoint array, () when it has none or it is not an array."""
    try:
        return np.shape(ann["keypoint"])
    except (KeyError, TypeError, ValueError):
        return ()


def _pyskl_clip(ann, layout: Layout) -> np.ndarray:
    """(M, T, V, C) float32 with the layout's channels: 2-D keypoints get the score as third channel."""
    shape = _kp_shape(ann)
    if len(shape) != 4:
        raise BadSample(f"'keypoint' must be an array (M, T, V, C), got {shape or 'none'}")
    kp = np.asarray(ann["keypoint"])
    if kp.shape[-1] == 2 and layout.channels == 3:
        score = ann.get("keypoint_score")
        score = np.ones(kp.shape[:-1]) if score is None else np.asarray(score)
        if score.shape != kp.shape[:-1]:
            raise BadSample(f"keypoint_score has shape {score.shape}, expected {kp.shape[:-1]}")
        kp = np.concatenate([kp.astype(np.float32), score.astype(np.float32)[..., None]], axis=-1)
    return kp


def _infer_pyskl_layout(annotations: list, file: Path) -> Layout:
    """The layout of the most common (V, C) of the keypoints; clips of other shapes get skipped."""
    shapes = Counter(_kp_shape(a)[-2:] for a in annotations
                     if isinstance(a, dict) and len(_kp_shape(a)) == 4).most_common(2)
    if not shapes or (len(shapes) == 2 and shapes[0][1] == shapes[1][1]):
        raise SkelactError(f"{file}: cannot infer the layout from the keypoint shapes "
                           f"({', '.join(str(s) for s, _ in shapes) or 'none'}); pass --layout")
    v, c = shapes[0][0]
    name, dims = _BY_JOINTS.get(v, (None, None))
    if name is None or c != dims:
        kind = "2-D" if c == 2 else f"{c}-channel"
        raise SkelactError(f"{file}: no known layout has {v} joints with {kind} keypoints; pass --layout "
                           f"(one of {', '.join(LAYOUTS)})")
    return get_layout(name)


def import_pyskl(file: str | os.PathLike, *, trust_pickle: bool = False, layout: str | None = None,
                 class_names: str | os.PathLike | None = None, out: str | os.PathLike,
                 strict: bool = False, dtype: str = "float32", overwrite: bool = False) -> dict:
    """Import a pyskl annotation pickle into a store; return its summary. See the module docstring.

    The layout is inferred from the joint count when not given (17 coco17, 18 openpose18, both 2-D;
    20 ucla20, 25 ntu25, both 3-D). Class names are ``class_0``.. unless a names file is given.
    """
    file = Path(file)
    if not trust_pickle:
        raise SkelactError(f"{file}: pyskl annotations are a Python pickle, and loading a pickle can run "
                           f"arbitrary code; re-run with --trust-pickle (trust_pickle=True) only if you "
                           f"trust where this file came from")
    try:
        with open(file, "rb") as f:
            data = pickle.load(f)
    except Exception as e:  # a pickle can fail in arbitrary ways
        raise SkelactError(f"{file}: cannot load pickle ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise SkelactError(f"{file}: not a pyskl annotation file "
                           f"(expected a dict with an 'annotations' list)")
    annotations = data["annotations"]
    split = data.get("split") or {}
    if not isinstance(split, dict):
        raise SkelactError(f"{file}: 'split' must be a dict of name -> list of frame_dir")
    lay = _infer_pyskl_layout(annotations, file) if layout is None else _layout(layout, str(file))
    extra, rules = _pyskl_splits(split, file)

    labels, clips = {}, {}
    for i, ann in enumerate(annotations):
        name = str(ann.get("frame_dir", f"#{i}")) if isinstance(ann, dict) else f"#{i}"
        if not isinstance(ann, dict):
            labels[name] = "annotation is not a dict"
            continue
        label = ann.get("label")
        ok = isinstance(label, (int, np.integer)) and not isinstance(label, bool)
        labels.setdefault(name, int(label) if ok else f"label {label!r} is not an integer")
        clips.setdefault(name, []).append(ann)  # a repeated frame_dir is reported by the store
    names = _class_names_file(class_names) if class_names is not None else None
    num_classes = max((v for v in labels.values() if isinstance(v, int)), default=-1) + 1
    names = names or [f"class_{i}" for i in range(num_classes)]
    max_persons = max((_kp_shape(a)[0] for anns in clips.values() for a in anns
                       if len(_kp_shape(a)) == 4), default=1)
    items = [(name, f"{file}[{name}]", lambda a=ann: _pyskl_clip(a, lay))
             for name, anns in clips.items() for ann in anns]
    items += [(name, f"{file}[{name}]", None) for name, v in labels.items() if name not in clips]
    return _write(out, items, labels, extra, layout=lay, class_names=names,
                  max_persons=max(1, max_persons), splits=rules, dataset=file.stem,
                  source={"source": str(file), "format": "pyskl"}, strict=strict, dtype=dtype,
                  overwrite=overwrite)

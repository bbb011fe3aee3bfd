"""NW-UCLA: read ``all_sqe/aAA_sSS_eEE_vVV.json`` into a skeleton store (``skelact prepare ucla``).

Each JSON file holds ``file_name``, ``skeletons`` (T, 20, 3) in metres in the camera frame, and a 1-based
``label``. The ten actions a01-a06, a08, a09, a11, a12 become labels 0..9; the JSON label must agree with
the action in the file name. Clips are stored as they are, one person, raw coordinates (no centring, no
resampling: the ``ucla`` clip protocol does that when the data is read), including the 1-frame clips.

Metadata: ``subject`` = SS, ``view`` = VV, ``replication`` = EE. Split protocols:

- ``xview`` (the standard one): train = views 1 and 2 (1,020 clips), test = view 3 (464 clips).
- ``xsub`` (NW-UCLA has no official one; ours): train = subjects 1-5 (754 clips), test = subjects 6-10
  (730 clips).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from ..errors import BadSample, SkelactError
from .store import SkeletonStore, StoreWriter

ACTIONS = (1, 2, 3, 4, 5, 6, 8, 9, 11, 12)  # action ids in file names; label = position in this tuple
CLASS_NAMES = ("pick up with one hand", "pick up with two hands", "drop trash", "walk around", "sit down",
               "stand up", "donning", "doffing", "throw", "carry")
SPLITS = {
    "xview": {"column": "view", "train": [1, 2]},
    "xsub": {"column": "subject", "train": [1, 2, 3, 4, 5]},
}
_NAME = re.compile(r"a(\d+)_s(\d+)_e(\d+)_v(\d+)")


def read_ucla_json(path: Path) -> tuple[np.ndarray, dict]:
    """Read one NW-UCLA file; return skeletons float32 (T, 20, 3) and ``{label, subject, view,
    replication}`` (label 0-based). Raises :class:`BadSample` with the reason when it is unusable."""
    m = _NAME.fullmatch(path.stem)
    if not m:
        raise BadSample("file name is not of the form aAA_sSS_eEE_vVV.json")
    action, subject, replication, view = map(int, m.groups())
    if action not in ACTIONS:
        raise BadSample(f"action a{action:02d} is not one of NW-UCLA's ten actions")
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError) as e:  # ValueError covers invalid JSON and bad UTF-8
        raise BadSample(f"unreadable JSON ({e})") from None
    if not isinstance(data, dict):
        raise BadSample("JSON is not an object")
    missing = [k for k in ("file_name", "skeletons", "label") if k not in data]
    if missing:
        raise BadSample(f"missing key(s) {', '.join(missing)}")
    if data["file_name"] != path.stem:
        raise BadSample(f"file_name {data['file_name']!r} does not match the file name")
    label = ACTIONS.index(action)
    json_label = data["label"]
    if isinstance(json_label, bool) or not isinstance(json_label, int) or json_label != label + 1:
        raise BadSample(f"label {json_label!r} disagrees with action a{action:02d} (expected {label + 1})")
    try:
        skeletons = np.asarray(data["skeletons"])
    except (ValueError, TypeError):  # ragged nested lists
        raise BadSample("skeletons is not a regular T x 20 x 3 array") from None
    if skeletons.ndim != 3 or skeletons.shape[1:] != (20, 3) or skeletons.shape[0] < 1:
        raise BadSample(f"skeletons has shape {skeletons.shape}, expected (T, 20, 3) with T >= 1")
    if not (np.issubdtype(skeletons.dtype, np.number) and not np.issubdtype(skeletons.dtype, np.bool_)):
        raise BadSample("skeletons contains non-numeric values")
    skeletons = skeletons.astype(np.float32)
    if not np.isfinite(skeletons).all():
        raise BadSample("skeletons contains NaN or infinite values")
    return skeletons, {"label": label, "subject": subject, "view": view, "replication": replication}


def _find_json(raw: Path) -> list[Path]:
    if (raw / "all_sqe").is_dir():
        raw = raw / "all_sqe"
    if not raw.is_dir():
        raise SkelactError(f"{raw}: not a directory (expected NW-UCLA's all_sqe folder or its parent)")
    files = sorted(raw.glob("*.json"))
    if not files:
        raise SkelactError(f"{raw}: no .json files (expected NW-UCLA's all_sqe folder or its parent)")
    return files


def prepare_ucla(raw: str | os.PathLike, *, out: str | os.PathLike, strict: bool = False,
                 dtype: str = "float32", overwrite: bool = False) -> dict:
    """Convert NW-UCLA (``all_sqe`` or its parent) into a store at ``out``; return its summary.

    Bad files are skipped with their name and reason; with ``strict`` the first one raises
    :class:`SkelactError` naming the file and no store is written.
    """
    files = _find_json(Path(raw))
    with StoreWriter(out, dataset="nw_ucla", layout="ucla20", class_names=list(CLASS_NAMES),
                     max_persons=1, dtype=dtype, splits=SPLITS, source={"raw": str(files[0].parent)},
                     overwrite=overwrite) as writer:
        for path in files:
            try:
                skeletons, meta = read_ucla_json(path)
                writer.add(path.stem, skeletons, **meta)
            except BadSample as e:
                if strict:
                    raise SkelactError(f"{path}: {e}") from None
                writer.skip(path.name, str(e))
        if len(writer) == 0:
            first = writer.meta["skipped"][0]
            raise SkelactError(f"{files[0].parent}: no usable clips, store not written "
                               f"(first problem: {first['name']}: {first['reason']})")
        path = writer.commit()
    return {**SkeletonStore(path).summary(), "out": str(path)}

"""SkeletonDataset: clips of a :class:`SkeletonStore` through a clip protocol and a stream, as tensors."""

from __future__ import annotations

import os

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import SkelactError
from .store import SkeletonStore
from .transforms import STREAMS, get_protocol, resolve_augment, to_stream


class SkeletonDataset(Dataset):
    """``ds[i] -> (x: float32 tensor (C, T, V, M), label: int, sample_index: int)``.

    ``store``: a :class:`SkeletonStore` or its path. Clips are the store's ``split``/``part`` selection,
    or explicit store ``indices``, or every clip; ``repeat`` lists them that many times per epoch
    (``len(ds) = len(indices) * repeat``). ``protocol`` ("ntu", "ucla", "none") maps a clip to ``window``
    frames (T = window), ``stream`` is "j", "b", "jm" or "bm", M = ``num_persons`` (default the store's
    ``max_persons``; extra persons dropped, missing ones zero). ``augment``: None = the protocol's
    train-time defaults, False = none, or a dict overriding them (see ``transforms.resolve_augment``);
    only used when ``train``.

    Randomness of position ``i`` comes from ``np.random.default_rng([seed, epoch, i])``: it changes with
    :meth:`set_epoch` and does not depend on DataLoader workers or DDP ranks. ``sample_index`` is the
    clip's index in the store; ``labels`` and ``sample_indices`` are per position (length ``len(ds)``).
    """

    def __init__(self, store: SkeletonStore | str | os.PathLike, split: str | None = None,
                 part: str = "train", indices=None, protocol: str = "ntu", window: int = 64,
                 stream: str = "j", train: bool = True, seed: int = 0, repeat: int = 1,
                 num_persons: int | None = None, augment: dict | bool | None = None):
        self._store = store if isinstance(store, SkeletonStore) else SkeletonStore(store)
        self.store_path = str(self._store.path)
        n_store = len(self._store)
        if split is not None and indices is not None:
            raise SkelactError("dataset: give either split or indices, not both")
        if split is not None:
            chosen = self._store.split(split, part)
            if chosen.size == 0:
                raise SkelactError(f"{self.store_path}: split {split!r} part {part!r} selects no clips")
        elif indices is not None:
            chosen = np.asarray(indices)
            if chosen.ndim != 1 or chosen.size == 0 or not np.issubdtype(chosen.dtype, np.integer):
                raise SkelactError("dataset: indices must be a non-empty list of integers")
            if chosen.min() < 0 or chosen.max() >= n_store:
                raise SkelactError(f"dataset: indices outside 0..{n_store - 1} of {self.store_path}")
        else:
            chosen = np.arange(n_store)
        self.split, self.part = split, part
        self.indices = chosen.astype(np.int64)

        self.protocol = get_protocol(protocol)
        self.layout = self._store.layout
        for name, value, low in (("window", window, 1), ("repeat", repeat, 1), ("seed", seed, 0),
                                 ("num_persons", 1 if num_persons is None else num_persons, 1)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise SkelactError(f"dataset: {name} must be an integer >= {low}, not {value!r}")
        if stream not in STREAMS:
            raise SkelactError(f"dataset: unknown stream {stream!r}; known: {', '.join(STREAMS)}")
        if stream in ("b", "bm") and self._store.meta.get("num_joints") != self.layout.num_joints:
            raise SkelactError(f"{self.store_path}: stream {stream!r} needs the bone tree of the layout, "
                               f"but the store has {self._store.meta.get('num_joints')} joints and "
                               f"layout {self.layout.name} has {self.layout.num_joints}")
        self.augment = resolve_augment(self.protocol, augment) if train else {}
        geometric = {"rotate", "rotate_deg", "bone_scale", "scale"} & self.augment.keys()
        if geometric and self.layout.coords != 3:  # (x, y, score): 3-D geometry would mix in the score
            if isinstance(augment, dict) and geometric & augment.keys():
                raise SkelactError(f"dataset: {', '.join(sorted(geometric))} augmentation needs 3-D "
                                   f"coordinates; layout {self.layout.name} is 2-D (x, y, score)")
            self.augment = {k: v for k, v in self.augment.items() if k not in geometric}
        self.window, self.stream, self.train = int(window), stream, bool(train)
        self.seed, self.repeat = int(seed), int(repeat)
        # The epoch lives in shared memory so that DataLoader workers, persistent ones included, see
        # set_epoch() made in the main process (a plain attribute would be frozen in each worker).
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self.num_persons = int(num_persons) if num_persons is not None else self._store.max_persons

        self.in_channels = self.layout.channels
        self.num_classes = self._store.num_classes
        self.class_names = self._store.class_names
        self.sample_indices = np.tile(self.indices, self.repeat)
        self.labels = self._store.labels[self.sample_indices].astype(np.int64)
        self._parents = tuple(self.layout.parents)

    # A DataLoader with spawn/forkserver or DDP pickles the dataset: send the path, not the memmap.
    def __getstate__(self):
        state = self.__dict__.copy()
        state["_store"] = None
        return state

    @property
    def store(self) -> SkeletonStore:
        if self._store is None:
            self._store = SkeletonStore(self.store_path)
        return self._store

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation of this epoch; call it before iterating the DataLoader of the epoch."""
        if int(epoch) < 0:
            raise SkelactError(f"dataset: epoch must be >= 0, not {epoch}")
        self._epoch.fill_(int(epoch))

    def __len__(self) -> int:
        return len(self.sample_indices)

    def clip(self, position: int) -> np.ndarray:
        """The transformed clip of ``position`` as numpy float32 (M, T, V, C)."""
        rng = np.random.default_rng([self.seed, self.epoch, position]) if self.train else None
        x = self.store.clip(int(self.sample_indices[position]))
        if x.shape[0] > self.num_persons:
            x = x[:self.num_persons]
        x = self.protocol.fn(x, window=self.window, train=self.train, rng=rng, layout=self.layout,
                             **self.augment)
        x = to_stream(x, self.stream, self._parents, self.layout.coords)
        if x.shape[0] < self.num_persons:
            x = np.concatenate([x, np.zeros((self.num_persons - x.shape[0], *x.shape[1:]), x.dtype)])
        return x

    def __getitem__(self, position: int):
        if not -len(self) <= position < len(self):
            raise IndexError(f"position {position} out of range for {len(self)} clips")
        position = int(position) % len(self)
        x = self.clip(position).transpose(3, 1, 2, 0)
        return (torch.from_numpy(np.array(x, dtype=np.float32, order="C")),
                int(self.labels[position]), int(self.sample_indices[position]))

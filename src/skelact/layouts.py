"""Skeleton layouts as data: joint names, the bone tree, centre joint and left/right pairs.

Every layout is a tree rooted at its centre joint. ``edges`` are 0-based ``(child, parent)`` pairs;
``parents[v]`` is the parent of joint ``v`` and the root is its own parent, so the bone stream is
``x[:, :, v] - x[:, :, parents[v]]`` with a zero centre bone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import SkelactError


@dataclass(frozen=True)
class Layout:
    name: str
    joint_names: tuple[str, ...]
    edges: tuple[tuple[int, int], ...]  # 0-based (child, parent)
    center: int  # 0-based root of the bone tree
    left_right: tuple[tuple[int, int], ...]  # 0-based (left joint, right joint)
    channels: int = 3  # values per joint: xyz, or (x, y, score) for 2-D pose estimators
    coords: int = 3  # how many of them are spatial coordinates (3-D Kinect: 3; 2-D estimators: 2)
    parents: tuple[int, ...] = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "parents", tuple(_validate(self)))

    @property
    def num_joints(self) -> int:
        return len(self.joint_names)

    @property
    def bone_pairs(self) -> tuple[tuple[int, int], ...]:
        """(joint, parent) for every joint; the centre pairs with itself (zero bone)."""
        return tuple((v, p) for v, p in enumerate(self.parents))

    def index(self, joint_name: str) -> int:
        return self.joint_names.index(joint_name)

    def mirror_permutation(self) -> np.ndarray:
        """Joint permutation that swaps left and right (for horizontal-flip augmentation)."""
        perm = np.arange(self.num_joints)
        for a, b in self.left_right:
            perm[a], perm[b] = b, a
        return perm


def _validate(layout: Layout) -> list[int]:
    """Check the edges form a tree rooted at ``center`` covering every joint; return parents."""
    v = len(layout.joint_names)
    where = f"layout {layout.name!r}"
    if len(set(layout.joint_names)) != v:
        raise ValueError(f"{where}: duplicate joint names")
    if not 0 <= layout.center < v:
        raise ValueError(f"{where}: centre {layout.center} out of range 0..{v - 1}")
    parents = [-1] * v
    parents[layout.center] = layout.center
    for child, parent in layout.edges:
        if not (0 <= child < v and 0 <= parent < v):
            raise ValueError(f"{where}: edge ({child}, {parent}) out of range 0..{v - 1}")
        if child == layout.center or parents[child] != -1:
            raise ValueError(f"{where}: joint {child} has two parents or is the root with a parent")
        parents[child] = parent
    if len(layout.edges) != v - 1 or -1 in parents:
        raise ValueError(f"{where}: edges must form a tree over all {v} joints")
    for joint in range(v):  # every joint must reach the root without a cycle
        seen, j = set(), joint
        while j != layout.center:
            if j in seen:
                raise ValueError(f"{where}: cycle through joint {j}")
            seen.add(j)
            j = parents[j]
    for a, b in layout.left_right:
        if not (0 <= a < v and 0 <= b < v) or a == b:
            raise ValueError(f"{where}: bad left/right pair ({a}, {b})")
    return parents


def _from_one_based(edges, pairs):
    return (tuple((c - 1, p - 1) for c, p in edges), tuple((a - 1, b - 1) for a, b in pairs))


# Kinect v2, NTU RGB+D 60/120 (DATA.md). Edge and pair lists below are 1-based as in the dataset docs.
_NTU_EDGES, _NTU_LR = _from_one_based(
    [(1, 2), (2, 21), (3, 21), (4, 3), (5, 21), (6, 5), (7, 6), (8, 7), (9, 21), (10, 9), (11, 10),
     (12, 11), (13, 1), (14, 13), (15, 14), (16, 15), (17, 1), (18, 17), (19, 18), (20, 19), (22, 23),
     (23, 8), (24, 25), (25, 12)],
    [(5, 9), (6, 10), (7, 11), (8, 12), (13, 17), (14, 18), (15, 19), (16, 20), (22, 24), (23, 25)],
)
NTU25 = Layout(
    name="ntu25",
    joint_names=(
        "spine_base", "spine_mid", "neck", "head",
        "left_shoulder", "left_elbow", "left_wrist", "left_hand",
        "right_shoulder", "right_elbow", "right_wrist", "right_hand",
        "left_hip", "left_knee", "left_ankle", "left_foot",
        "right_hip", "right_knee", "right_ankle", "right_foot",
        "spine_shoulder", "left_hand_tip", "left_thumb", "right_hand_tip", "right_thumb",
    ),
    edges=_NTU_EDGES,
    center=20,
    left_right=_NTU_LR,
)

# Kinect v1, NW-UCLA (DATA.md).
_UCLA_EDGES, _UCLA_LR = _from_one_based(
    [(1, 2), (2, 3), (4, 3), (5, 3), (6, 5), (7, 6), (8, 7), (9, 3), (10, 9), (11, 10), (12, 11),
     (13, 1), (14, 13), (15, 14), (16, 15), (17, 1), (18, 17), (19, 18), (20, 19)],
    [(5, 9), (6, 10), (7, 11), (8, 12), (13, 17), (14, 18), (15, 19), (16, 20)],
)
UCLA20 = Layout(
    name="ucla20",
    joint_names=(
        "hip_center", "spine", "shoulder_center", "head",
        "left_shoulder", "left_elbow", "left_wrist", "left_hand",
        "right_shoulder", "right_elbow", "right_wrist", "right_hand",
        "left_hip", "left_knee", "left_ankle", "left_foot",
        "right_hip", "right_knee", "right_ankle", "right_foot",
    ),
    edges=_UCLA_EDGES,
    center=2,
    left_right=_UCLA_LR,
)

# COCO-17 keypoints (x, y, score), as produced by most 2-D pose estimators; rooted at the nose.
COCO17 = Layout(
    name="coco17",
    joint_names=(
        "nose", "left_eye", "right_eye", "left_ear", "right_ear",
        "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
        "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
    ),
    edges=((1, 0), (2, 0), (3, 1), (4, 2), (5, 0), (6, 0), (7, 5), (8, 6), (9, 7), (10, 8),
           (11, 5), (12, 6), (13, 11), (14, 12), (15, 13), (16, 14)),
    center=0,
    left_right=((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16)),
    channels=3,
    coords=2,
)

# OpenPose BODY-18 (COCO order with a neck), rooted at the neck.
OPENPOSE18 = Layout(
    name="openpose18",
    joint_names=(
        "nose", "neck", "right_shoulder", "right_elbow", "right_wrist",
        "left_shoulder", "left_elbow", "left_wrist", "right_hip", "right_knee", "right_ankle",
        "left_hip", "left_knee", "left_ankle", "right_eye", "left_eye", "right_ear", "left_ear",
    ),
    edges=((0, 1), (2, 1), (3, 2), (4, 3), (5, 1), (6, 5), (7, 6), (8, 1), (9, 8), (10, 9),
           (11, 1), (12, 11), (13, 12), (14, 0), (15, 0), (16, 14), (17, 15)),
    center=1,
    left_right=((5, 2), (6, 3), (7, 4), (11, 8), (12, 9), (13, 10), (15, 14), (17, 16)),
    channels=3,
    coords=2,
)

LAYOUTS: dict[str, Layout] = {lay.name: lay for lay in (NTU25, UCLA20, COCO17, OPENPOSE18)}


def get_layout(name: str | Layout) -> Layout:
    if isinstance(name, Layout):
        return name
    try:
        return LAYOUTS[name]
    except KeyError:
        raise SkelactError(f"unknown layout {name!r}; known: {', '.join(LAYOUTS)}") from None

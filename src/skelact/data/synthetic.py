"""The built-in default benchmark: synthetic, human-like skeleton actions on the ``ntu25`` layout.

Everything is generated from a seed, without files, deterministically (same seed, same bytes).

**How a clip is made.** A subject has a rest pose (standing, metres, feet on the floor) with its own
height, proportions, speed, amplitude, handedness and posture habits. An action sets per-joint Euler
angles over time, ``angles (T, V, 3)`` in degrees; forward kinematics walks down the ``ntu25`` bone tree
(``NTU25.parents``, rooted at spine_shoulder) and places every joint at ``parent + G_parent @ offset``,
so every bone keeps its subject's length exactly. The body is then stood on the floor, placed in the
scene (two persons face each other), seen from one of three camera views (the whole scene turned about
the vertical axis by -45, 0 or +45 degrees, plus jitter, then pitched and put about 3 m in front of the
camera: x right, y up, z depth, as NTU), jittered with per-clip joint noise (larger on the hand joints,
as Kinect is), and centred on spine_mid of the first person's first frame, as NTU preprocessing does.

**Classes** (``CLASS_NAMES``, labels in this order)::

     0 raise_both_arms   4 walk_in_place   8 wave_wrist_flick  12 typing
     1 squat             5 bow             9 drink             13 reading
     2 jump              6 clap           10 phone_call        14 handshake (2 persons)
     3 kick              7 wave           11 writing           15 push      (2 persons)

**Ambiguous groups** (``AMBIGUOUS_GROUPS``): classes that share the gross motion exactly (every joint
but the hands, thumbs and hand tips, ``HAND_JOINTS``, moves with the same distribution, and the clips
have the same length distribution) and differ only in wrist and finger rotations:

- ``wave`` / ``wave_wrist_flick``: arm raised, forearm swaying; the second adds a wrist flick.
- ``drink`` / ``phone_call``: hand brought up beside the chin; the hand tilts to the mouth in sips,
  or is held upright against the ear.
- ``writing`` / ``typing`` / ``reading``: seated, forearms forward; a small scribbling wrist (one
  hand), fast finger taps (both hands), or still hands holding a book with an occasional page turn.

A linear classifier on simple statistics of the joints confuses them; recognising them takes the
fine temporal detail of a few noisy hand joints, which is what FR-Head's fine-grained contrast targets.

**Variation.** 16 subjects (``NUM_SUBJECTS``: height and proportions, speed, amplitude, posture and
hand habits; subjects 5 and 10 are left-handed and mirror the one-person actions), 3 views
(``VIEW_ANGLES``), replications with their own timing, 30-100 frames at 30 fps, per-clip joint noise
(``generate(noise=0)`` turns it off), one-person clips (about 15% with an idle bystander as a second
person) and two-person interactions.
Clip ``i`` has label ``i % K``; the following counters run over views, subjects, then replications, so
every prefix is balanced over classes and views and one performance is seen from the three views.

**Splits.** ``xsub``: odd subjects train, even subjects test. ``xview``: views 2 and 3 train, view 1
tests (as NTU's cross-view).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from ..errors import BadSample, SkelactError
from ..layouts import NTU25
from .store import SkeletonStore, StoreWriter

CLASS_NAMES = (
    "raise_both_arms", "squat", "jump", "kick", "walk_in_place", "bow", "clap",
    "wave", "wave_wrist_flick", "drink", "phone_call", "writing", "typing", "reading",
    "handshake", "push",
)
AMBIGUOUS_GROUPS = (("wave", "wave_wrist_flick"), ("drink", "phone_call"),
                    ("writing", "typing", "reading"))
TWO_PERSON_CLASSES = ("handshake", "push")
NUM_SUBJECTS = 16
LEFT_HANDED = (5, 10)
VIEW_ANGLES = {1: -45.0, 2: 0.0, 3: 45.0}  # degrees about the vertical axis
DEFAULT_NUM_SAMPLES = 1200
FPS = 30
MIN_FRAMES, MAX_FRAMES = 30, 100
SPLITS = {
    "xsub": {"column": "subject", "train": list(range(1, NUM_SUBJECTS + 1, 2))},
    "xview": {"column": "view", "train": [2, 3]},
}
# natural duration in seconds at speed 1 (members of an ambiguous group share it)
DURATION = {
    "raise_both_arms": 2.4, "squat": 2.6, "jump": 2.0, "kick": 2.0, "walk_in_place": 2.8, "bow": 2.4,
    "clap": 2.2, "wave": 2.3, "wave_wrist_flick": 2.3, "drink": 2.6, "phone_call": 2.6,
    "writing": 2.6, "typing": 2.6, "reading": 2.6, "handshake": 2.4, "push": 1.9,
}

LAYOUT = NTU25
V = LAYOUT.num_joints
J = {name: i for i, name in enumerate(LAYOUT.joint_names)}
ROOT = LAYOUT.center  # spine_shoulder
HAND_JOINTS = tuple(J[f"{s}_{p}"] for s in ("left", "right") for p in ("hand", "hand_tip", "thumb"))
FEET = tuple(J[n] for n in ("left_ankle", "left_foot", "right_ankle", "right_foot"))


def _tree_order() -> list[int]:
    """Joints ordered so that every parent comes before its children."""
    order = [ROOT]
    for v in order:
        order += [c for c in range(V) if c != ROOT and LAYOUT.parents[c] == v]
    return order


ORDER = _tree_order()

# Rest pose of the body frame: metres, x = the person's right, y up, z backwards (the person faces -z,
# i.e. the camera in the front view), feet on the floor y = 0. Right side; the left side mirrors x.
_REST_RIGHT = {
    "spine_base": (0.0, 0.90, 0.0), "spine_mid": (0.0, 1.16, 0.01), "spine_shoulder": (0.0, 1.37, 0.0),
    "neck": (0.0, 1.44, -0.01), "head": (0.0, 1.56, -0.02),
    "shoulder": (0.17, 1.35, 0.01), "elbow": (0.20, 1.10, 0.02), "wrist": (0.21, 0.86, 0.0),
    "hand": (0.21, 0.79, -0.005), "thumb": (0.20, 0.765, -0.04), "hand_tip": (0.215, 0.72, -0.01),
    "hip": (0.08, 0.84, 0.0), "knee": (0.09, 0.47, -0.01), "ankle": (0.09, 0.08, 0.01),
    "foot": (0.10, 0.03, -0.10),
}


def _rest_pose() -> np.ndarray:
    """Standing rest pose (V, 3), symmetric about x = 0."""
    rest = np.zeros((V, 3))
    for name, xyz in _REST_RIGHT.items():
        if name in J:
            rest[J[name]] = xyz
        else:
            rest[J[f"right_{name}"]] = xyz
            rest[J[f"left_{name}"]] = (-xyz[0], xyz[1], xyz[2])
    return rest


REST = _rest_pose()
# which proportion scales each bone (joint -> its parent) of a subject
_GROUP = {"spine_base": "torso", "spine_mid": "torso", "neck": "head", "head": "head",
          "shoulder": "shoulders", "elbow": "upper_arm", "wrist": "forearm", "hand": "hand",
          "thumb": "hand", "hand_tip": "hand", "hip": "hips", "knee": "thigh", "ankle": "shin",
          "foot": "foot", "spine_shoulder": "torso"}
GROUPS = sorted(set(_GROUP.values()))


def _group_of(v: int) -> str:
    name = LAYOUT.joint_names[v]
    return _GROUP[name.split("_", 1)[1] if name.startswith(("left_", "right_")) else name]


# ---------------------------------------------------------------------------------------------------
# rotations and forward kinematics

def rotation(angles: np.ndarray) -> np.ndarray:
    """Euler angles (..., 3) in radians about x, y, z -> rotation matrices (..., 3, 3) = Rz Rx Ry.

    In the body frame: +x at a shoulder or hip swings the limb forward, +z swings the right arm out to
    the side, +y twists a bone about its own (rest, vertical) axis.
    """
    ax, ay, az = np.moveaxis(np.asarray(angles, dtype=np.float64), -1, 0)
    zero, one = np.zeros_like(ax), np.ones_like(ax)

    def mat(*rows):
        return np.stack([np.stack(r, -1) for r in rows], -2)

    rx = mat((one, zero, zero), (zero, np.cos(ax), -np.sin(ax)), (zero, np.sin(ax), np.cos(ax)))
    ry = mat((np.cos(ay), zero, np.sin(ay)), (zero, one, zero), (-np.sin(ay), zero, np.cos(ay)))
    rz = mat((np.cos(az), -np.sin(az), zero), (np.sin(az), np.cos(az), zero), (zero, zero, one))
    return rz @ rx @ ry


def forward_kinematics(offsets: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """Joint positions (T, V, 3) from bone offsets (V, 3) and per-joint Euler angles (T, V, 3) degrees.

    ``offsets[v]`` is joint v minus its parent in the rest pose. The rotation of joint v turns the bones
    to its children: ``G_v = G_parent(v) R_v`` and ``x_v = x_parent(v) + G_parent(v) offsets[v]``, with the
    root (spine_shoulder) at the origin. The pelvis (spine_base) is the one exception: its rotation is
    given in the body frame, so bending the torso does not swing the legs. Bone lengths are exact.
    """
    R = rotation(np.radians(angles))
    G = np.empty_like(R)
    x = np.zeros(angles.shape[:-1] + (3,))
    for v in ORDER:
        p = LAYOUT.parents[v]
        if v == ROOT:
            G[:, v] = R[:, v]
            continue
        x[:, v] = x[:, p] + G[:, p] @ offsets[v]
        G[:, v] = R[:, v] if v == J["spine_base"] else G[:, p] @ R[:, v]
    return x


# ---------------------------------------------------------------------------------------------------
# subjects and performances

@dataclass
class Subject:
    """A synthetic performer: bone offsets (V, 3), habits, and posture bias angles (V, 3) degrees."""
    id: int
    offsets: np.ndarray
    speed: float
    amp: float
    left_handed: bool
    bias: np.ndarray


def make_subject(seed: int, subject: int) -> Subject:
    """Subject ``subject`` (1-based) of generator ``seed``: height, proportions and habits."""
    rng = np.random.default_rng([seed, 0, subject])
    height = rng.uniform(0.88, 1.10)
    scale = {g: height * rng.uniform(0.92, 1.08) for g in GROUPS}
    offsets = REST - REST[list(LAYOUT.parents)]
    offsets *= np.array([scale[_group_of(v)] for v in range(V)])[:, None]
    bias = np.zeros((V, 3))
    bias[ROOT, 0] = rng.normal(-2.0, 3.0)  # slight forward stoop
    bias[J["neck"]] = rng.normal(0.0, 4.0, 3)
    for side in ("left", "right"):  # the resting hands' habits, blur static hand cues across classes
        bias[J[f"{side}_wrist"]] = rng.normal(0.0, 10.0, 3)
        bias[J[f"{side}_hand"]] = rng.normal(0.0, 8.0, 3)
        bias[J[f"{side}_elbow"], 0] = rng.normal(8.0, 4.0)
    return Subject(id=subject, offsets=offsets, speed=rng.uniform(0.8, 1.25), amp=rng.uniform(0.85, 1.15),
                   left_handed=subject in LEFT_HANDED, bias=bias)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


class Take:
    """The clock and randomness of one performance: ``t`` (T,) seconds, ``u`` (T,) phase in [0, 1]."""

    def __init__(self, num_frames: int, rng: np.random.Generator, speed: float, amp: float):
        self.T, self.rng, self.speed, self.amp = num_frames, rng, speed, amp
        self.t = np.arange(num_frames) / FPS
        self.u = np.linspace(0.0, 1.0, num_frames)

    def keys(self, knots, values) -> np.ndarray:
        """Smooth (ease in/out) interpolation through ``values`` (K,) at phases ``knots`` (K,): (T,)."""
        knots, values = np.asarray(knots, dtype=float), np.asarray(values, dtype=float)
        i = np.clip(np.searchsorted(knots, self.u, side="right") - 1, 0, len(knots) - 2)
        s = _smoothstep((self.u - knots[i]) / np.maximum(knots[i + 1] - knots[i], 1e-9))
        return values[i] + s * (values[i + 1] - values[i])

    def envelope(self) -> np.ndarray:
        """0 at rest, rises to 1, holds, returns towards 0 (T,), with random timing."""
        a = self.rng.uniform(0.03, 0.15)
        b = a + self.rng.uniform(0.15, 0.25)
        d = 1.0 - self.rng.uniform(0.0, 0.12)
        c = d - self.rng.uniform(0.15, 0.25)
        return self.keys([0.0, a, b, c, d, 1.0], [0, 0, 1, 1, 0, 0])

    def osc(self, hz: float, jitter: float = 0.15) -> np.ndarray:
        """sin(2π f t + φ) (T,) with f = hz · speed · U(1 ± jitter) and a random phase."""
        f = hz * self.speed * self.rng.uniform(1 - jitter, 1 + jitter)
        return np.sin(2 * np.pi * f * self.t + self.rng.uniform(0, 2 * np.pi))

    def wobble(self, deg: float, hz: float = 0.4) -> np.ndarray:
        """Slow random drift (T,): a sum of two low-frequency sines of about ``deg`` degrees."""
        return deg * 0.7 * (self.osc(hz, 0.5) + self.osc(hz * 1.7, 0.5))


class Body:
    """What one person does in a take: ``angles`` (T, V, 3) degrees, ``lift`` (T,) m above the floor,
    ``shift`` (T, 3) m of the whole body in its own frame."""

    def __init__(self, subject: Subject, T: int):
        self.subject = subject
        self.angles = np.zeros((T, V, 3))
        self.lift = np.zeros(T)
        self.shift = np.zeros((T, 3))

    def rot(self, joint: str, ax=0.0, ay=0.0, az=0.0) -> None:
        """Add Euler angles (scalars or (T,) arrays, degrees) to one joint."""
        self.angles[:, J[joint]] += np.stack(np.broadcast_arrays(ax, ay, az), -1)

    def both(self, part: str, ax=0.0, ay=0.0, az=0.0) -> None:
        """Add angles to the right ``part`` and the mirrored angles (ay, az negated) to the left one."""
        self.rot(f"right_{part}", ax, ay, az)
        self.rot(f"left_{part}", ax, -np.asarray(ay), -np.asarray(az))

    def positions(self) -> np.ndarray:
        """Joint positions (T, V, 3) in the body's own frame, standing on the floor at the origin.

        The feet joints touching the floor (soft-min weights) stay put horizontally and the lowest one
        is at height ``lift``; then ``shift`` moves the whole body. A rigid move per frame, so bone
        lengths stay exact.
        """
        x = forward_kinematics(self.subject.offsets, self.angles)
        feet = x[:, FEET]  # (T, 4, 3)
        low = feet[..., 1].min(1)  # (T,)
        w = np.exp(-(feet[..., 1] - low[:, None]) / 0.02)
        anchor = (w[..., None] * feet).sum(1) / w.sum(1)[:, None]
        anchor[:, 1] = low - self.lift
        return x - anchor[:, None] + self.shift[:, None]

    def raise_to(self, joint: str, height: float, t: int, weight: np.ndarray) -> None:
        """Pitch the right shoulder by ``δ · weight`` (T,) so that ``joint`` is at ``height`` at frame t."""
        delta = np.linspace(-40.0, 40.0, 81)
        trial = np.repeat(self.angles[t][None], len(delta), 0)
        trial[:, J["right_shoulder"], 0] += delta * weight[t]
        y = forward_kinematics(self.subject.offsets, trial)
        y = y[:, J[joint], 1] - y[:, FEET, 1].min(1) + self.lift[t]
        self.rot("right_shoulder", ax=delta[np.abs(y - height).argmin()] * weight)


def _idle(take: Take, subject: Subject) -> Body:
    """A person standing: arms relaxed, breathing sway, small head and hand drift, the subject's habits."""
    body = Body(subject, take.T)
    body.angles += subject.bias
    body.rot("spine_shoulder", ax=take.wobble(1.0, 0.25), az=take.wobble(0.8, 0.2))
    body.rot("neck", ax=take.wobble(3.0), az=take.wobble(2.0))
    body.both("shoulder", ax=take.wobble(2.0), az=6.0)
    for side in ("left", "right"):
        body.rot(f"{side}_wrist", ax=take.wobble(3.0, 0.6), az=take.wobble(3.0, 0.6))
    return body


# ---------------------------------------------------------------------------------------------------
# actions: each adds to the idle body of its performer(s); the active hand is the right one

def raise_both_arms(take, bodies):
    (b,) = bodies
    e = take.envelope() * take.amp
    b.both("shoulder", ax=np.minimum(150 * e, 175), az=25 * e)
    b.both("elbow", ax=-5 * e)
    b.rot("spine_shoulder", ax=5 * e)


def squat(take, bodies):
    (b,) = bodies
    e = take.envelope() * min(take.amp, 1.05)
    b.rot("spine_shoulder", ax=-25 * e)
    b.both("hip", ax=95 * e, az=8 * e)
    b.both("knee", ax=-105 * e)
    b.both("ankle", ax=10 * e)
    b.both("shoulder", ax=70 * e)


def jump(take, bodies):
    (b,) = bodies
    a = take.rng.uniform(0.08, 0.22)
    knots = a + np.array([0.0, 0.14, 0.22, 0.34, 0.44, 0.6])
    crouch = take.keys([0, *knots, 1], [0, 0, 1, 0, 0, 0.8, 0, 0])
    flight = take.keys([0, *knots, 1], [0, 0, 0, 1, 1, 0, 0, 0])
    swing = take.keys([0, *knots, 1], [0, 0, -40, 110, 40, 10, 0, 0])
    b.rot("spine_shoulder", ax=-20 * crouch)
    b.both("hip", ax=60 * crouch)
    b.both("knee", ax=-85 * crouch)
    b.both("ankle", ax=25 * crouch - 30 * flight)
    b.both("shoulder", ax=swing * take.amp)
    s = np.clip((take.u - knots[2]) / (knots[4] - knots[2]), 0, 1)
    b.lift = take.rng.uniform(0.15, 0.3) * take.amp * 4 * s * (1 - s)


def kick(take, bodies):
    (b,) = bodies
    a = take.rng.uniform(0.1, 0.3)
    knots = [0, a, a + 0.12, a + 0.2, a + 0.3, a + 0.42, 1]
    b.rot("right_hip", ax=take.keys(knots, [0, 0, 60, 85, 55, 0, 0]) * take.amp)
    b.rot("right_knee", ax=take.keys(knots, [0, 0, -95, -8, -90, 0, 0]))
    b.rot("right_ankle", ax=take.keys(knots, [0, 0, -10, -30, -10, 0, 0]))
    b.rot("left_knee", ax=take.keys(knots, [0, 0, -10, -12, -10, 0, 0]))
    e = take.keys(knots, [0, 0.3, 1, 1, 1, 0.3, 0])
    b.both("shoulder", az=25 * e, ax=10 * e)
    b.rot("spine_shoulder", ax=take.keys(knots, [0, 0, 5, 12, 5, 0, 0]))


def walk_in_place(take, bodies):
    (b,) = bodies
    e = take.envelope() * take.amp
    step = take.osc(0.9)
    for side, s in (("left", step), ("right", -step)):
        up = 45 * e * np.maximum(s, 0)
        b.rot(f"{side}_hip", ax=up)
        b.rot(f"{side}_knee", ax=-1.8 * up)
        b.rot(f"{side}_ankle", ax=0.5 * up)
        b.rot(f"{side}_shoulder", ax=-20 * e * s)
        b.rot(f"{side}_elbow", ax=20 * e)


def bow(take, bodies):
    (b,) = bodies
    e = take.envelope() * take.amp
    b.rot("spine_shoulder", ax=-50 * e)
    b.rot("neck", ax=-10 * e)
    b.both("shoulder", ax=35 * e)


def clap(take, bodies):
    (b,) = bodies
    e = take.envelope()
    hold = np.clip(take.keys([0, 0.1, 0.3, 0.7, 0.9, 1], [0, 0, 1, 1, 0, 0]) * 1.5 * e, 0, 1)
    apart = 0.5 * (1 + take.osc(2.5)) * hold * take.amp
    b.both("shoulder", ax=50 * e, ay=35 * e, az=-20 * e + 18 * apart)
    b.both("elbow", ax=70 * e)


def _wave_arm(take, b):
    """The shared gross motion of the waves: right arm up, forearm swaying (returns the sway (T,))."""
    e = take.envelope()
    sway = take.osc(2.0)
    b.rot("right_shoulder", ax=10 * e, ay=-80 * e, az=75 * e)
    b.rot("right_elbow", ax=e * (95 + 25 * take.amp * sway))
    return e, sway


def wave(take, bodies):
    (b,) = bodies
    e, _ = _wave_arm(take, b)
    b.rot("right_wrist", ax=-5 * e)


def wave_wrist_flick(take, bodies):
    (b,) = bodies
    e, sway = _wave_arm(take, b)
    flick = 2 * sway ** 2 - 1  # the hand flaps at twice the sway frequency
    b.rot("right_wrist", ax=-5 * e + 30 * take.amp * e * flick)


def _hand_to_face(take, b):
    """The shared gross motion of drink / phone call: right hand up beside the chin, held, lowered."""
    e = take.envelope()
    b.rot("right_shoulder", ax=35 * e + take.wobble(3.0) * e, ay=45 * e, az=10 * e)
    b.rot("right_elbow", ax=135 * e)
    return e


def drink(take, bodies):
    (b,) = bodies
    e = _hand_to_face(take, b)
    sip = e ** 3 * (0.6 + 0.4 * take.osc(0.7))  # the cup tilts while the hand is up
    b.rot("right_wrist", ax=-15 * e - 25 * take.amp * sip, az=-20 * e)


def phone_call(take, bodies):
    (b,) = bodies
    e = _hand_to_face(take, b)
    b.rot("right_wrist", ax=20 * e, az=-10 * e)
    b.rot("right_hand", ax=15 * e)


def _at_desk(take, b):
    """The shared gross motion of writing / typing / reading: seated, forearms forward."""
    b.both("hip", ax=88 + take.rng.normal(0, 4), az=6)
    b.both("knee", ax=-88 + take.rng.normal(0, 4))
    b.rot("spine_shoulder", ax=-12 + take.rng.normal(0, 3) + take.wobble(2.0, 0.3))
    b.rot("neck", ax=-15 + take.wobble(4.0, 0.3))
    b.both("shoulder", ax=25 + take.rng.normal(0, 4), ay=25 + take.rng.normal(0, 5))
    b.both("elbow", ax=80 + take.rng.normal(0, 5))
    b.both("wrist", ax=-10)


def writing(take, bodies):
    (b,) = bodies
    _at_desk(take, b)
    b.rot("right_wrist", ax=6 * take.amp * take.osc(4.0), az=15 * take.amp * take.osc(2.0))
    b.rot("right_thumb", ax=10 * take.osc(2.0))


def typing(take, bodies):
    (b,) = bodies
    _at_desk(take, b)
    for side in ("left", "right"):
        busy = np.clip(1.5 * take.osc(0.5, 0.5) + 0.7, 0, 1)  # each hand pauses now and then
        b.rot(f"{side}_wrist", ax=8 * take.amp * busy * take.osc(4.0))
        b.rot(f"{side}_thumb", ax=30 * take.amp * busy * take.osc(4.0))


def reading(take, bodies):
    (b,) = bodies
    _at_desk(take, b)
    b.both("wrist", az=-15)  # holding the book
    a = take.rng.uniform(0.15, 0.7)
    turn = take.keys([0, a, a + 0.08, a + 0.2, 1], [0, 0, 1, 0, 0]) * take.amp
    b.rot("right_wrist", ay=50 * turn, az=20 * turn)


def handshake(take, bodies):
    e = take.envelope()
    pump = 8 * take.osc(2.0) * np.clip(2 * e - 0.8, 0, 1)
    for b in bodies:  # the joined hands move together
        b.rot("right_shoulder", ax=50 * e + pump, ay=20 * e, az=-5 * e)
        b.rot("right_elbow", ax=40 * e)
        b.rot("right_wrist", az=-20 * e)
    t = int(e.argmax())  # the partner meets the first person's hand height
    bodies[1].raise_to("right_hand", bodies[0].positions()[t, J["right_hand"], 1], t, e)


def push(take, bodies):
    pusher, pushed = bodies
    a = take.rng.uniform(0.1, 0.35)
    knots = [0, a, a + 0.15, a + 0.25, a + 0.4, a + 0.55, 1]
    pusher.both("shoulder", ax=take.keys(knots, [0, 0, 60, 85, 75, 0, 0]), ay=15)
    pusher.both("elbow", ax=take.keys(knots, [0, 0, 100, 10, 15, 0, 0]))
    pusher.rot("spine_shoulder", ax=take.keys(knots, [0, 0, -5, -15, -10, 0, 0]))
    back = take.keys(knots, [0, 0, 0, 0.6, 1, 1, 1])
    pushed.rot("spine_shoulder", ax=take.keys(knots, [0, 0, 0, 18, 8, 0, 0]) * take.amp)
    pushed.both("shoulder", ax=take.keys(knots, [0, 0, 0, 30, 15, 0, 0]), az=10 * back)
    pushed.rot("right_hip", ax=-25 * take.keys(knots, [0, 0, 0, 1, 0, 0, 0]))
    pushed.shift[:, 2] = take.rng.uniform(0.15, 0.3) * take.amp * back  # a step backwards


ACTIONS = {name: globals()[name] for name in CLASS_NAMES}
# where two persons touch at the first person's full reach: (joint of 1st, joint of 2nd, gap in metres)
CONTACT = {"handshake": ("right_hand", "right_hand", 0.0), "push": ("right_hand", "spine_mid", 0.08)}


# ---------------------------------------------------------------------------------------------------
# bodies in the scene, cameras, clips

def _yaw(deg: float) -> np.ndarray:
    return rotation(np.radians([0.0, deg, 0.0]))


def _mirror(x: np.ndarray) -> np.ndarray:
    """Left-right mirror image (..., V, 3) of a body: swap sides, negate x."""
    return x[..., LAYOUT.mirror_permutation(), :] * np.array([-1.0, 1.0, 1.0])


def perform(seed: int, subject: int, label: int, replication: int) -> np.ndarray:
    """One performance in the scene frame (before the camera): positions (M, T, V, 3), metres.

    The scene frame is the body frame of the front view: x right, y up (floor at 0), the actor near the
    origin facing -z. Two-person classes give M = 2; one-person classes sometimes add an idle bystander.
    """
    name = CLASS_NAMES[label]
    sub = make_subject(seed, subject)
    rng = np.random.default_rng([seed, 1, subject, label, replication])
    seconds = DURATION[name] * rng.uniform(0.8, 1.2) / sub.speed
    T = int(np.clip(round(seconds * FPS), MIN_FRAMES, MAX_FRAMES))
    take = Take(T, rng, speed=sub.speed, amp=sub.amp * rng.uniform(0.9, 1.1))

    if name in TWO_PERSON_CLASSES:
        partner = make_subject(seed, 1 + (subject + rng.integers(1, NUM_SUBJECTS)) % NUM_SUBJECTS)
        people = [sub, partner]
    else:
        people = [sub]
    bodies = [_idle(take, p) for p in people]
    ACTIONS[name](take, bodies)
    x = [b.positions() for b in bodies]

    if len(people) == 2:  # face each other, side by side in the front view, touching at full reach
        side = rng.choice([-1.0, 1.0])
        a, b = x[0] @ _yaw(-90 * side).T, x[1] @ _yaw(90 * side).T  # a faces +x·side, b faces a
        ja, jb, gap = CONTACT[name]
        reach = np.linalg.norm((a[:, J[ja]] - a[:, J["spine_mid"]])[:, [0, 2]], axis=-1)
        t = reach.argmax()
        offset = a[t, J[ja]] - b[t, J[jb]] + [side * (gap + rng.uniform(0, 0.04)), 0, 0]
        offset[1] = 0.0
        x = [a, b + offset]
    else:
        if sub.left_handed:
            x = [_mirror(x[0])]
        x[0] = x[0] @ _yaw(rng.normal(0, 8)).T
        if rng.random() < 0.15:  # an idle bystander
            other = make_subject(seed, 1 + (subject + rng.integers(1, NUM_SUBJECTS)) % NUM_SUBJECTS)
            y = _idle(take, other).positions() @ _yaw(rng.uniform(-60, 60)).T
            x.append(y + [rng.choice([-1, 1]) * rng.uniform(0.9, 1.4), 0, rng.uniform(-0.3, 0.5)])
    return np.stack(x)


def render(scene: np.ndarray, rng: np.random.Generator, view: int, noise: float = 1.0) -> np.ndarray:
    """A scene (M, T, V, 3) seen by camera ``view``: turned, pitched, placed ~3 m away, jittered with
    joint noise (scaled by ``noise``; 0 disables it) and centred on spine_mid of person 0, frame 0.
    Returns float64 (M, T, V, 3)."""
    turn = rotation(np.radians([rng.normal(0, 3), VIEW_ANGLES[view] + rng.normal(0, 5), 0.0]))
    where = np.array([rng.uniform(-0.4, 0.4), -rng.uniform(0.7, 1.1), rng.uniform(2.6, 3.4)])
    x = scene @ turn.T + where
    sigma = np.full(V, rng.uniform(0.002, 0.010))
    sigma[list(HAND_JOINTS)] *= 1.3
    x = x + noise * sigma[:, None] * rng.standard_normal(x.shape)
    return x - x[0, 0, J["spine_mid"]]


def clip_ids(i: int) -> tuple[int, int, int, int]:
    """(label, subject, view, replication) of clip ``i``: labels cycle fastest, then views, subjects,
    replications."""
    K = len(CLASS_NAMES)
    j = i // K
    return i % K, (j // 3) % NUM_SUBJECTS + 1, j % 3 + 1, j // (3 * NUM_SUBJECTS) + 1


def generate(seed: int = 0, num_samples: int | None = None, *,
             noise: float = 1.0) -> Iterator[tuple[str, np.ndarray, int, dict]]:
    """Yield ``(name, frames float32 (M, T, 25, 3), label, meta)`` for clips ``0 .. num_samples - 1``.

    ``meta`` is ``{"subject", "view", "replication"}``; names are NTU-like ``PpppCcccRrrrAaaa``
    (1-based ids). Clip ``i`` depends only on ``seed`` and ``i``.
    """
    n = DEFAULT_NUM_SAMPLES if num_samples is None else int(num_samples)
    scenes = {}  # one performance serves its three views
    for i in range(n):
        label, subject, view, rep = clip_ids(i)
        key = (subject, label, rep)
        if key not in scenes:
            scenes[key] = perform(seed, subject, label, rep)
        scene = scenes.pop(key) if view == 3 else scenes[key]
        rng = np.random.default_rng([seed, 2, subject, label, rep, view])
        frames = render(scene, rng, view, noise).astype(np.float32)
        name = f"P{subject:03d}C{view:03d}R{rep:03d}A{label + 1:03d}"
        yield name, frames, label, {"subject": subject, "view": view, "replication": rep}


def prepare_synthetic(*, out, seed: int = 0, num_samples: int | None = None, strict: bool = False,
                      dtype: str = "float32", overwrite: bool = False) -> dict:
    """Write the synthetic benchmark (``DEFAULT_NUM_SAMPLES`` clips by default) as a store at ``out``."""
    n = DEFAULT_NUM_SAMPLES if num_samples is None else num_samples
    if int(n) < 1:
        raise SkelactError(f"num_samples: must be a positive number of clips, not {num_samples}")
    source = {"generator": "skelact.data.synthetic", "seed": int(seed), "num_samples": int(n)}
    with StoreWriter(out, dataset="synthetic", layout=LAYOUT, class_names=list(CLASS_NAMES),
                     max_persons=2, dtype=dtype, splits=SPLITS, source=source,
                     overwrite=overwrite) as w:
        for name, frames, label, meta in generate(seed, n):
            try:
                w.add(name, frames, label, **meta)
            except BadSample as e:
                if strict:
                    raise SkelactError(f"{name}: {e}") from None
                w.skip(name, str(e))
        path = w.commit()
    store = SkeletonStore(path)
    return {"out": str(path), "num_samples": len(store), "skipped": list(store.meta["skipped"]),
            "splits": store.summary()["splits"]}

"""Procedural human motion on the SMPL 22-joint skeleton, with paraphrased captions.

Every motion is built from per-joint local rotations (pitch about x, yaw about y, roll about z,
applied as ``Ry Rz Rx``) driven by an action's phase functions, forward kinematics on the
HumanML3D target skeleton, and a root placed by *foot locking*: each frame the lower foot is the
stance foot and the root moves so that it stays where it was, the lowest foot joint touches the
floor (y = 0) except in a jump's flight phase. Contacts are therefore physical: a stance foot
does not slide. Actions: walk, run, jump, wave, squat, kick, turn, sit down, side step, and
combinations of two ("a person walks forward slowly then turns left"), with speed, direction,
side, amplitude and style parameters. Sampled at 20 fps (HumanML3D's rate).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .features import FPS
from .skeleton import NUM_JOINTS, PARENTS, TARGET_BONE_LENGTHS

__all__ = [
    "ACTIONS",
    "MotionSpec",
    "generate_motion",
    "random_spec",
    "rest_offsets",
    "synthesize",
]

ACTIONS: tuple[str, ...] = (
    "walk", "run", "jump", "wave", "squat", "kick", "turn", "sit_down", "side_step",
)  # fmt: skip

# joint ids
PELVIS, L_HIP, R_HIP, SPINE1, L_KNEE, R_KNEE, SPINE2, L_ANKLE, R_ANKLE, SPINE3 = range(10)
NECK, L_COLLAR, R_COLLAR, HEAD, L_SHOULDER, R_SHOULDER, L_ELBOW, R_ELBOW = (
    12,
    13,
    14,
    15,
    16,
    17,
    18,
    19,
)
FOOT_JOINTS = (7, 8, 10, 11)

_REST_DIRS = np.array(
    [[0, 0, 0], [1, -0.3, 0], [-1, -0.3, 0], [0, 1, 0], [0, -1, 0], [0, -1, 0], [0, 1, 0],
     [0, -1, 0], [0, -1, 0], [0, 1, 0], [0, -0.5, 1], [0, -0.5, 1], [0, 1, 0], [1, 0.3, 0],
     [-1, 0.3, 0], [0, 1, 0.2], [1, -0.3, 0], [-1, -0.3, 0], [0, -1, 0], [0, -1, 0], [0, -1, 0],
     [0, -1, 0]],
    dtype=np.float64,
)  # fmt: skip


def rest_offsets() -> np.ndarray:
    """The generator's rest pose (arms down, facing +z) with HumanML3D's bone lengths."""
    dirs = _REST_DIRS.copy()
    dirs[1:] /= np.linalg.norm(dirs[1:], axis=-1, keepdims=True)
    return dirs * TARGET_BONE_LENGTHS[:, None]


@dataclass(frozen=True)
class Segment:
    """One action: ``action``, ``speed`` (0.6 slow, 1 normal, 1.5 fast), ``direction``
    (forward / backward / left / right / none), ``side`` (left / right / none), ``amplitude``
    (0.7-1.3), ``style`` (e.g. "wide arms", "crouched") and its share of the frames."""

    action: str
    speed: float = 1.0
    direction: str = "none"
    side: str = "none"
    amplitude: float = 1.0
    style: str = "plain"
    share: float = 1.0


@dataclass(frozen=True)
class MotionSpec:
    """A motion: one or two :class:`Segment` and a length in frames."""

    segments: tuple[Segment, ...]
    length: int
    captions: tuple[str, ...] = field(default=())


# --------------------------------------------------------------------------- action phase functions
def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0, 1)
    return x * x * (3 - 2 * x)


def _legs(pose, flex_l, flex_r, knee_l, knee_r, roll_l=0.0, roll_r=0.0) -> None:
    """Hip flexion (forward positive), knee flexion, hip roll; ankles keep the foot level."""
    pose[:, L_HIP, 0], pose[:, R_HIP, 0] = -flex_l, -flex_r
    pose[:, L_KNEE, 0], pose[:, R_KNEE, 0] = knee_l, knee_r
    pose[:, L_ANKLE, 0], pose[:, R_ANKLE, 0] = flex_l - knee_l, flex_r - knee_r
    pose[:, L_HIP, 2], pose[:, R_HIP, 2] = roll_l, roll_r
    pose[:, L_ANKLE, 2], pose[:, R_ANKLE, 2] = -np.asarray(roll_l), -np.asarray(roll_r)


def _arms(pose, flex_l, flex_r, elbow_l, elbow_r, raise_l=0.0, raise_r=0.0) -> None:
    """Shoulder flexion (forward positive), elbow flexion, sideways raise (abduction)."""
    pose[:, L_SHOULDER, 0], pose[:, R_SHOULDER, 0] = -flex_l, -flex_r
    pose[:, L_ELBOW, 0], pose[:, R_ELBOW, 0] = -elbow_l, -elbow_r
    pose[:, L_SHOULDER, 2], pose[:, R_SHOULDER, 2] = raise_l, -np.asarray(raise_r)


def _gait(t, seg: Segment, freq, hip, knee, lean, elbow, sideways=False):
    """Walking-like gait; returns (pose, yaw rate, airborne)."""
    n = len(t)
    pose = np.zeros((n, NUM_JOINTS, 3))
    sign = -1.0 if seg.direction == "backward" else 1.0
    phi = 2 * math.pi * freq * t * sign
    a = hip * seg.amplitude
    # the leg not carrying the body swings (knee bent); forward: the stance leg's flexion falls
    swing_l, swing_r = np.maximum(0.0, np.cos(phi)), np.maximum(0.0, -np.cos(phi))
    kk = knee * seg.amplitude
    arm = (1.6 if seg.style == "wide arms" else 0.8) * a
    stance = np.where(np.cos(phi) < 0, 0, 1)
    if sideways:  # step out with the leading leg (other leg stance), then carry the body over it
        u = (freq * t) % 1.0
        first = u < 0.5
        out = 1.2 * a * np.where(first, _smoothstep(2 * u), 1 - _smoothstep(2 * u - 1))
        lift = 0.8 * kk * np.abs(np.sin(2 * math.pi * u))
        zero = np.zeros(n)
        if seg.direction == "left":
            _legs(
                pose,
                0.5 * lift * first,
                0.5 * lift * ~first,
                lift * first,
                lift * ~first,
                out,
                zero,
            )
            stance = np.where(first, 1, 0)
        else:
            _legs(
                pose,
                0.5 * lift * ~first,
                0.5 * lift * first,
                lift * ~first,
                lift * first,
                zero,
                -out,
            )
            stance = np.where(first, 0, 1)
        _arms(pose, 0.0, 0.0, 0.2, 0.2, 0.15 + 0.3 * out, 0.15 + 0.3 * out)
    else:
        flex_l, flex_r = a * np.sin(phi), -a * np.sin(phi)
        _legs(pose, flex_l, flex_r, kk * swing_l, kk * swing_r)
        _arms(pose, -arm * np.sin(phi), arm * np.sin(phi), elbow, elbow, 0.1, 0.1)
    crouch = 0.25 if seg.style == "crouched" else 0.0
    pose[:, SPINE1, 0] = lean + crouch
    pose[:, SPINE3, 1] = 0.1 * a * np.sin(phi)  # counter-rotation of the chest
    yaw = 0.0
    if seg.direction in ("left", "right") and not sideways:
        yaw = (0.6 if seg.direction == "left" else -0.6) * seg.speed
    return pose, np.full(n, yaw), np.zeros(n, bool), stance


def _walk(t, seg):
    return _gait(
        t,
        seg,
        0.9 * seg.speed,
        0.32 + 0.08 * seg.speed,
        0.55 + 0.15 * seg.speed,
        0.04 * seg.speed,
        0.25,
    )


def _run(t, seg):
    return _gait(t, seg, 1.4 * seg.speed, 0.55, 1.3, 0.22, 1.4)


def _side_step(t, seg):
    return _gait(t, seg, 0.8 * seg.speed, 0.35, 0.5, 0.02, 0.2, sideways=True)


def _turn(t, seg):
    step = Segment("walk", seg.speed, "forward", amplitude=0.5 * seg.amplitude)
    pose, _, air, stance = _gait(t, step, 0.9 * seg.speed, 0.1, 0.5, 0.02, 0.3)
    total = math.pi if seg.style == "around" else math.pi / 2
    duration = max(t[-1] - t[0], 1e-3)
    yaw = (total if seg.side == "left" else -total) / duration
    return pose, np.full(len(t), yaw), air, stance


def _jump(t, seg):
    n = len(t)
    pose = np.zeros((n, NUM_JOINTS, 3))
    count = 2 if seg.style == "twice" else 1
    u = (t - t[0]) / max(t[-1] - t[0], 1e-3) * count % 1.0  # phase within each jump
    crouch = np.where(u < 0.35, np.sin(math.pi * u / 0.35), 0.0) + np.where(
        u > 0.7, np.sin(math.pi * (u - 0.7) / 0.3), 0.0
    )
    bend = 0.8 * seg.amplitude * crouch
    _legs(pose, bend, bend, 1.6 * bend, 1.6 * bend)
    up = np.clip((u - 0.3) / 0.4, 0, 1)
    arm = 2.6 * np.sin(math.pi * up) * seg.amplitude - 0.6 * crouch
    _arms(pose, arm, arm, 0.3, 0.3, 0.1, 0.1)
    pose[:, SPINE1, 0] = 0.45 * crouch
    air = (u > 0.35) & (u < 0.7)
    return pose, np.zeros(n), air, np.full(n, 2)


def _wave(t, seg):
    n = len(t)
    pose = np.zeros((n, NUM_JOINTS, 3))
    ramp = _smoothstep((t - t[0]) / 0.6) * _smoothstep((t[-1] - t) / 0.6)
    osc = np.sin(2 * math.pi * 1.6 * seg.speed * t)
    lift = 2.5 * seg.amplitude * ramp
    wave = ramp * (0.9 + 0.5 * seg.amplitude * osc)
    if seg.side == "both":
        _arms(pose, 0.0, 0.0, wave, wave, lift, lift)
    elif seg.side == "left":
        _arms(pose, 0.0, 0.0, wave, 0.1, lift, 0.1)
    else:
        _arms(pose, 0.0, 0.0, 0.1, wave, 0.1, lift)
    return pose, np.zeros(n), np.zeros(n, bool), np.full(n, 2)


def _squat(t, seg):
    n = len(t)
    pose = np.zeros((n, NUM_JOINTS, 3))
    depth = 0.5 * (1 - np.cos(2 * math.pi * 0.45 * seg.speed * (t - t[0])))
    h = 1.2 * seg.amplitude * depth
    _legs(pose, h, h, 2.0 * h, 2.0 * h, 0.15 * depth, -0.15 * depth)
    pose[:, L_ANKLE, 0] = pose[:, R_ANKLE, 0] = -0.6 * h  # heels stay down: shins tilt forward
    _arms(pose, 1.4 * depth, 1.4 * depth, 0.1, 0.1, 0.0, 0.0)
    pose[:, SPINE1, 0] = 0.5 * h
    return pose, np.zeros(n), np.zeros(n, bool), np.full(n, 2)


def _kick(t, seg):
    n = len(t)
    pose = np.zeros((n, NUM_JOINTS, 3))
    count = 2 if seg.style == "twice" else 1
    u = (t - t[0]) / max(t[-1] - t[0], 1e-3) * count % 1.0
    pulse = np.exp(-0.5 * ((u - 0.5) / 0.12) ** 2)
    chamber = np.exp(-0.5 * ((u - 0.4) / 0.1) ** 2)
    flex = 1.4 * seg.amplitude * pulse
    knee = 1.2 * chamber * (1 - pulse) + 0.2
    if seg.side == "left":
        _legs(pose, flex, 0 * flex, knee, 0.05 + 0 * knee)
    else:
        _legs(pose, 0 * flex, flex, 0.05 + 0 * knee, knee)
    _arms(pose, 0.3 * pulse, 0.3 * pulse, 0.6, 0.6, 0.5 * pulse, 0.5 * pulse)
    pose[:, SPINE1, 0] = -0.2 * pulse
    return pose, np.zeros(n), np.zeros(n, bool), np.full(n, 1 if seg.side == "left" else 0)


def _sit_down(t, seg):
    n = len(t)
    pose = np.zeros((n, NUM_JOINTS, 3))
    p = _smoothstep((t - t[0]) / max(0.7 * (t[-1] - t[0]) / seg.speed, 0.3))
    _legs(pose, 1.55 * p, 1.55 * p, 1.55 * p, 1.55 * p)
    pose[:, SPINE1, 0] = 0.5 * np.sin(math.pi * p) - 0.1 * p
    _arms(pose, 0.6 * np.sin(math.pi * p), 0.6 * np.sin(math.pi * p), 0.3 + 0.6 * p, 0.3 + 0.6 * p)
    return pose, np.zeros(n), np.zeros(n, bool), np.full(n, 2)


_ACTION_FNS: dict[str, Callable] = {
    "walk": _walk, "run": _run, "jump": _jump, "wave": _wave, "squat": _squat,
    "kick": _kick, "turn": _turn, "sit_down": _sit_down, "side_step": _side_step,
}  # fmt: skip


# --------------------------------------------------------------------------- kinematics
def _euler_matrices(angles: np.ndarray) -> np.ndarray:
    """``Ry(b) Rz(c) Rx(a)`` for angles (..., 3) = (a about x, b about y, c about z)."""
    a, b, c = np.moveaxis(angles, -1, 0)
    ca, sa, cb, sb, cc, sc = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(c), np.sin(c)
    one, zero = np.ones_like(a), np.zeros_like(a)
    rx = np.stack([one, zero, zero, zero, ca, -sa, zero, sa, ca], -1).reshape(a.shape + (3, 3))
    ry = np.stack([cb, zero, sb, zero, one, zero, -sb, zero, cb], -1).reshape(a.shape + (3, 3))
    rz = np.stack([cc, -sc, zero, sc, cc, zero, zero, zero, one], -1).reshape(a.shape + (3, 3))
    return ry @ rz @ rx


def _pose_positions(pose: np.ndarray, yaw: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Joint positions (T, 22, 3) of local rotations with the root at the origin."""
    local = _euler_matrices(pose)  # (T, 22, 3, 3)
    local[:, PELVIS] = (
        _euler_matrices(np.stack([np.zeros_like(yaw), yaw, np.zeros_like(yaw)], -1))
        @ local[:, PELVIS]
    )
    glob = np.zeros_like(local)
    pos = np.zeros(pose.shape[:2] + (3,))
    glob[:, 0] = local[:, 0]
    for j in range(1, NUM_JOINTS):
        p = PARENTS[j]
        pos[:, j] = pos[:, p] + glob[:, p] @ offsets[j]
        glob[:, j] = glob[:, p] @ local[:, j]
    return pos


_STANCE_FEET = ((7, 10), (8, 11), (7, 8, 10, 11))  # left, right, both


def _place_root(
    rel: np.ndarray, air: np.ndarray, stance: np.ndarray, jump_height: float, forward_speed: float
) -> np.ndarray:
    """Foot locking: world positions from root-relative ones (see module docstring). The stance
    foot (left, right, or both averaged) keeps its horizontal position from frame to frame."""
    n = len(rel)
    root = np.zeros((n, 3))
    feet = list(FOOT_JOINTS)
    for i in range(1, n):
        if air[i]:
            heading = rel[i, L_HIP] - rel[i, R_HIP]
            fwd = np.array([-heading[2], 0.0, heading[0]])
            fwd /= max(np.linalg.norm(fwd), 1e-9)
            root[i] = root[i - 1] + fwd * forward_speed / FPS
            continue
        ids = list(_STANCE_FEET[int(stance[i])])
        delta = (rel[i - 1, ids] - rel[i, ids]).mean(0)
        root[i, [0, 2]] = root[i - 1, [0, 2]] + delta[[0, 2]]
    world = rel + root[:, None]
    world[:, :, 1] -= world[:, feet, 1].min(axis=1, keepdims=True)  # lowest foot on the floor
    # flight: a parabola over each airborne run of frames
    i = 0
    while i < n:
        if air[i]:
            j = i
            while j < n and air[j]:
                j += 1
            s = np.linspace(0, 1, j - i + 2)[1:-1]
            world[i:j, :, 1] += (4 * jump_height * s * (1 - s))[:, None]
            i = j
        else:
            i += 1
    return world


def generate_motion(spec: MotionSpec, rng: np.random.Generator | None = None) -> np.ndarray:
    """Joint positions (length, 22, 3), y up, of ``spec``; segments blend over 8 frames."""
    rng = rng or np.random.default_rng(0)
    n = spec.length
    shares = np.array([s.share for s in spec.segments], dtype=np.float64)
    bounds = np.round(np.cumsum(np.concatenate([[0], shares / shares.sum()])) * n).astype(int)
    pose = np.zeros((n, NUM_JOINTS, 3))
    yaw_rate = np.zeros(n)
    air = np.zeros(n, bool)
    stance = np.zeros(n, int)
    jump_height, fwd_speed = 0.0, 0.0
    t_all = np.arange(n) / FPS
    prev = None
    for seg, a, b in zip(spec.segments, bounds[:-1], bounds[1:]):
        if seg.action not in _ACTION_FNS:
            raise ValueError(f"unknown action {seg.action!r}; valid: {list(ACTIONS)}")
        p, y, ai, st = _ACTION_FNS[seg.action](t_all[a:b], seg)
        if prev is not None:  # blend the first frames from the previous pose
            k = min(8, b - a)
            w = _smoothstep(np.arange(1, k + 1) / (k + 1))[:, None, None]
            p[:k] = (1 - w) * prev + w * p[:k]
            ai[:k] = False
        pose[a:b], yaw_rate[a:b], air[a:b], stance[a:b] = p, y, ai, st
        prev = p[-1]
        if seg.action == "jump":
            jump_height = 0.25 * seg.amplitude
            fwd_speed = 1.2 * seg.amplitude if seg.direction == "forward" else 0.0
    yaw = np.cumsum(yaw_rate) / FPS + rng.uniform(-math.pi, math.pi)
    pose += rng.normal(0, 0.01, size=(1, NUM_JOINTS, 3))  # a per-person posture
    rel = _pose_positions(pose, yaw, rest_offsets())
    return _place_root(rel, air, stance, jump_height, fwd_speed)


# --------------------------------------------------------------------------- captions
_SUBJECTS = ("a person", "someone", "a man", "a woman", "the person", "a figure")
_SPEED = {
    0.6: ("slowly", "at a slow pace"),
    1.0: ("", "at a normal pace"),
    1.5: ("quickly", "fast"),
}


def _speed_word(speed: float, variant: int) -> str:
    words = _SPEED[min(_SPEED, key=lambda s: abs(s - speed))]
    return words[variant % 2]


def _phrase(seg: Segment, variant: int) -> str:
    """A verb phrase for one segment; ``variant`` picks among paraphrases."""
    sp = _speed_word(seg.speed, variant)
    v = variant % 3
    d = seg.direction
    if seg.action in ("walk", "run"):
        verb = {"walk": ("walks", "is walking", "strolls"), "run": ("runs", "is running", "jogs")}[
            seg.action
        ][v]
        where = {
            "forward": ("forward", "ahead", "straight"),
            "backward": ("backward", "backwards", "in reverse"),
            "left": (
                "forward curving to the left",
                "in a curve to the left",
                "forward while veering left",
            ),
            "right": (
                "forward curving to the right",
                "in a curve to the right",
                "forward while veering right",
            ),
        }[d][v]
        extra = {"wide arms": " swinging the arms widely", "crouched": " hunched over"}.get(
            seg.style, ""
        )
        return " ".join(w for w in (verb, where, sp) if w) + extra
    if seg.action == "side_step":
        return (
            "steps sideways to the " + d,
            "sidesteps to the " + d,
            "shuffles to the " + d + " side",
        )[v] + (" " + sp if sp else "")
    if seg.action == "turn":
        amount = "around" if seg.style == "around" else ("to the " + seg.side)
        return (
            (f"turns {amount}", f"is turning {amount}", f"rotates {amount}")[v]
            if seg.style != "around"
            else (
                f"turns around to the {seg.side}",
                f"spins around to the {seg.side}",
                f"does a half turn to the {seg.side}",
            )[v]
        )
    if seg.action == "jump":
        where = "forward" if d == "forward" else ("in place", "on the spot", "up")[v]
        times = " twice" if seg.style == "twice" else ""
        return (f"jumps {where}{times}", f"leaps {where}{times}", f"hops {where}{times}")[v]
    if seg.action == "wave":
        hand = {"left": "left hand", "right": "right hand", "both": "both hands"}[seg.side]
        return (f"waves the {hand}", f"waves with the {hand}", f"raises the {hand} and waves")[v]
    if seg.action == "squat":
        return ("squats down and stands up", "does a squat", "crouches down and rises")[v] + (
            " " + sp if sp else ""
        )
    if seg.action == "kick":
        leg = seg.side + " leg"
        times = " twice" if seg.style == "twice" else ""
        return (
            f"kicks with the {leg}{times}",
            f"kicks forward with the {leg}{times}",
            f"does a {leg} kick{times}",
        )[v]
    if seg.action == "sit_down":
        return ("sits down", "sits down on a chair", "lowers themselves to sit")[v] + (
            " " + sp if sp else ""
        )
    raise ValueError(f"unknown action {seg.action!r}")


def captions_for(segments: tuple[Segment, ...], n: int = 3, offset: int = 0) -> tuple[str, ...]:
    """``n`` paraphrased captions of a motion ("a person walks forward slowly then turns left")."""
    out = []
    for k in range(n):
        v = offset + k
        subject = _SUBJECTS[v % len(_SUBJECTS)]
        joins = (" then ", " and then ", ", then ", " before it ")
        parts = [_phrase(s, v + i) for i, s in enumerate(segments)]
        text = subject + " " + parts[0]
        for p in parts[1:]:
            text += joins[v % len(joins)] + p
        out.append(text)
    return tuple(out)


# --------------------------------------------------------------------------- random specs
def _random_segment(action: str, rng: np.random.Generator) -> Segment:
    speed = float(rng.choice([0.6, 1.0, 1.5]))
    amplitude = float(rng.uniform(0.75, 1.25))
    direction, side, style = "none", "none", "plain"
    if action in ("walk", "run"):
        direction = str(rng.choice(["forward", "forward", "backward", "left", "right"]))
        style = str(rng.choice(["plain", "plain", "wide arms", "crouched"]))
        if action == "run" and direction == "backward":
            direction = "forward"
    elif action == "side_step":
        direction = str(rng.choice(["left", "right"]))
    elif action == "turn":
        side = str(rng.choice(["left", "right"]))
        style = str(rng.choice(["plain", "around"]))
    elif action == "jump":
        direction = str(rng.choice(["none", "forward"]))
        style = str(rng.choice(["plain", "twice"]))
    elif action == "wave":
        side = str(rng.choice(["left", "right", "both"]))
    elif action == "kick":
        side = str(rng.choice(["left", "right"]))
        style = str(rng.choice(["plain", "twice"]))
    return Segment(action, speed, direction, side, amplitude, style)


def random_spec(
    rng: np.random.Generator,
    min_len: int = 40,
    max_len: int = 196,
    combo_prob: float = 0.3,
    actions: tuple[str, ...] = ACTIONS,
    num_captions: int = 3,
) -> MotionSpec:
    """A random motion: one action, or two (``combo_prob``) joined by "then"."""
    length = int(rng.integers(min_len, max_len + 1))
    first = _random_segment(str(rng.choice(actions)), rng)
    segments: tuple[Segment, ...] = (first,)
    if rng.random() < combo_prob:
        second = _random_segment(str(rng.choice(actions)), rng)
        segments = (first, Segment(**{**second.__dict__, "share": 1.0}))
    return MotionSpec(
        segments, length, captions_for(segments, num_captions, int(rng.integers(0, 6)))
    )


def synthesize(
    n: int,
    seed: int = 0,
    min_len: int = 40,
    max_len: int = 196,
    combo_prob: float = 0.3,
    actions: tuple[str, ...] = ACTIONS,
) -> tuple[list[np.ndarray], list[MotionSpec]]:
    """``n`` seeded motions (joints (T_i, 22, 3)) and their specs (captions inside)."""
    for a in actions:
        if a not in ACTIONS:
            raise ValueError(f"unknown action {a!r}; valid: {list(ACTIONS)}")
    if not 2 <= min_len <= max_len:
        raise ValueError(f"need 2 <= min_len <= max_len, got {min_len}, {max_len}")
    rng = np.random.default_rng(seed)
    specs = [random_spec(rng, min_len, max_len, combo_prob, tuple(actions)) for _ in range(n)]
    joints = [generate_motion(s, np.random.default_rng([seed, i])) for i, s in enumerate(specs)]
    return joints, specs

"""Procedural action clips and minimal pairs, rendered deterministically with OpenCV.

``render_pair(domain, seed)`` gives two clips that are byte-identical up to a divergence frame and
then differ only in the outcome (bowling: strike vs gutter ball; golf: putt in vs miss; basketball:
make vs miss), with per-frame masks of the objects. ``render_clip(action, seed)`` renders one clip of
any action class; these train the project's model organism.

Every nuisance comes from the seed: colours, textures, scene geometry, camera position and per-frame
jitter, lighting, object speeds and start times. The outcome never changes a nuisance draw, so a
pair differs only where the outcome does.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

SHIFT = 4  # sub-pixel drawing: OpenCV coordinates in 1/16 px
ONE = 1 << SHIFT

ACTIONS = ("bowling", "golf putting", "juggling balls", "shooting basketball", "swinging pendulum", "skipping rope")
OUTCOMES = {
    "bowling": ("strike", "gutter"),
    "golf putting": ("in", "miss"),
    "shooting basketball": ("make", "miss"),
}
DOMAINS = {"bowling": "bowling", "golf": "golf putting", "basketball": "shooting basketball"}


@dataclass
class Clip:
    """A rendered clip: uint8 RGB frames [T, H, W, 3] and boolean masks name -> [T, H, W]."""

    frames: np.ndarray
    masks: dict[str, np.ndarray]
    meta: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------------------- helpers
def _rng(action: str, seed: int, stream: str = "") -> np.random.Generator:
    return np.random.default_rng([zlib.crc32(f"{action}/{stream}".encode()), int(seed)])


def _p(x: float, y: float) -> tuple[int, int]:
    return int(round(x * ONE)), int(round(y * ONE))


def _circle(img: np.ndarray, x: float, y: float, r: float, color, aa: bool = True) -> None:
    if r > 0.3:
        cv2.circle(img, _p(x, y), max(1, int(round(r * ONE))), color, -1, cv2.LINE_AA if aa else cv2.LINE_8, SHIFT)


def _ellipse(img: np.ndarray, x: float, y: float, rx: float, ry: float, angle: float, color, aa: bool = True) -> None:
    if rx > 0.3 and ry > 0.3:
        axes = (max(1, int(round(rx * ONE))), max(1, int(round(ry * ONE))))
        cv2.ellipse(img, _p(x, y), axes, angle, 0, 360, color, -1, cv2.LINE_AA if aa else cv2.LINE_8, SHIFT)


def _line(img: np.ndarray, a, b, color, thickness: int = 1) -> None:
    cv2.line(img, _p(*a), _p(*b), color, max(1, thickness), cv2.LINE_AA, SHIFT)


def _poly(img: np.ndarray, pts, color) -> None:
    cv2.fillPoly(img, [np.array([_p(x, y) for x, y in pts], np.int32)], color, cv2.LINE_AA, SHIFT)


def _color(rng: np.random.Generator, lo=(0, 0, 0), hi=(255, 255, 255)) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(lo, np.array(hi) + 1))  # type: ignore[return-value]


def _smoothstep(x: float) -> float:
    x = min(1.0, max(0.0, x))
    return x * x * (3 - 2 * x)


class Stage:
    """Canvas, background texture, camera jitter and lighting shared by every scene.

    Frames are drawn on a canvas ``margin`` px larger on each side; each output frame is a crop
    shifted by that frame's camera jitter, then lit by a gain and a gradient.
    """

    def __init__(self, rng: np.random.Generator, size: int, num_frames: int, base_color, texture: float = 14.0):
        self.size, self.T = size, num_frames
        self.margin = m = max(2, size // 40)
        S = size + 2 * m
        noise = rng.normal(0, 1, (max(4, S // 16), max(4, S // 16), 3)).astype(np.float32)
        blobs = cv2.resize(noise, (S, S), interpolation=cv2.INTER_CUBIC)
        fine = cv2.GaussianBlur(rng.normal(0, 1, (S, S, 1)).astype(np.float32), (0, 0), 1.0)[..., None]
        bg = np.asarray(base_color, np.float32) + texture * blobs + 0.4 * texture * fine
        self.background = np.clip(bg, 0, 255).astype(np.uint8)
        # Camera: a smooth random walk of at most `margin` px.
        steps = rng.normal(0, max(0.4, size / 400), (num_frames, 2)).cumsum(0)
        steps -= steps.mean(0)
        self.jitter = np.clip(np.round(steps), -m, m).astype(int)
        # Lighting: global gain and a linear gradient in a random direction.
        gain = rng.uniform(0.8, 1.15)
        angle = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
        self.light = (gain * (1 + rng.uniform(0.0, 0.25) * (np.cos(angle) * xx + np.sin(angle) * yy)))[..., None]
        self.mask_names: list[str] = []

    def canvas(self) -> np.ndarray:
        return self.background.copy()

    def blank_mask(self) -> np.ndarray:
        return np.zeros(self.background.shape[:2], np.uint8)

    def render(
        self, mask_names: Sequence[str], draw: Callable[[int, np.ndarray, dict[str, np.ndarray]], None]
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The frame loop of every scene: for each frame t a fresh canvas and blank masks (one per
        name), painted by ``draw(t, img, masks)``, then cropped and lit by ``finish``."""
        frames: list[np.ndarray] = []
        masks: dict[str, list[np.ndarray]] = {name: [] for name in mask_names}
        for t in range(self.T):
            img, frame_masks = self.canvas(), {name: self.blank_mask() for name in mask_names}
            draw(t, img, frame_masks)
            frames.append(img)
            for name, mask in frame_masks.items():
                masks[name].append(mask)
        return self.finish(frames, masks)

    def finish(
        self, frames: list[np.ndarray], masks: dict[str, list[np.ndarray]]
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        m, s = self.margin, self.size

        def crop(img: np.ndarray, t: int) -> np.ndarray:
            dx, dy = self.jitter[t]
            return img[m + dy : m + dy + s, m + dx : m + dx + s]

        video = np.stack([crop(f, t) for t, f in enumerate(frames)]).astype(np.float32)
        video = np.clip(video * self.light[None] + 0.5, 0, 255).astype(np.uint8)
        out_masks = {k: np.stack([crop(mk, t) for t, mk in enumerate(v)]) > 0 for k, v in masks.items()}
        return video, out_masks


class Perspective:
    """A ground plane seen from behind: lane/green coordinates (u across, v along) -> pixels."""

    def __init__(self, cx: float, horizon: float, near_y: float, half_width: float, depth_ratio: float):
        self.cx, self.horizon, self.near_y, self.hw, self.D = cx, horizon, near_y, half_width, depth_ratio

    def scale(self, v: float) -> float:
        return 1.0 / (1.0 + v * (self.D - 1.0))

    def __call__(self, u: float, v: float) -> tuple[float, float]:
        s = self.scale(v)
        return self.cx + u * self.hw * s, self.horizon + (self.near_y - self.horizon) * s


# ----------------------------------------------------------------------------------------- bowling
def _bowling(seed: int, outcome: str, T: int, S: int, m: int | None = None) -> Clip:
    rng = _rng("bowling", seed)
    stage = Stage(rng, S, T, _color(rng, (40, 30, 40), (120, 110, 130)))
    off = stage.margin
    cam = Perspective(
        cx=off + S * rng.uniform(0.44, 0.56),
        horizon=off + S * rng.uniform(-0.1, 0.05),
        near_y=off + S * rng.uniform(1.0, 1.1),
        half_width=S * rng.uniform(0.42, 0.55),
        depth_ratio=rng.uniform(2.4, 3.4),
    )
    lane_color = _color(rng, (150, 100, 50), (225, 180, 120))
    gutter_color = _color(rng, (30, 30, 30), (80, 80, 90))
    board_shade = rng.uniform(0.85, 0.95)
    deck_color = _color(rng, (10, 10, 10), (60, 50, 50))
    ball_color = _color(rng, (0, 0, 0), (200, 200, 220))
    pin_band = _color(rng, (150, 0, 0), (255, 60, 60))
    # Motion (drawn before the outcome is looked at, so both outcomes share it).
    t0 = int(rng.integers(0, max(1, T // 10) + 1))
    n_roll = int(round(T * rng.uniform(0.5, 0.62)))
    t_hit = t0 + n_roll
    t_div = t0 + int(round(n_roll * rng.uniform(0.35, 0.5)))
    n_drop = int(rng.integers(4, 7))
    u0, u_hit = rng.uniform(-0.35, 0.35), rng.uniform(-0.04, 0.04)
    side = rng.choice([-1.0, 1.0])
    pin_rows = [(0.0,), (-0.11, 0.11), (-0.22, 0.0, 0.22), (-0.33, -0.11, 0.11, 0.33)]
    pins = [(u, 0.84 + 0.035 * r) for r, row in enumerate(pin_rows) for u in row]
    scatter = [
        (rng.uniform(-1.2, 1.2), rng.uniform(-0.02, 0.12), int(rng.integers(0, 4)), rng.uniform(-90, 90)) for _ in pins
    ]
    v_start, v_pins = 0.03, 0.84

    def ball_at(t: int) -> tuple[float, float] | None:
        if t < t0:
            return None
        prog = (t - t0) / n_roll
        v = v_start + (v_pins - v_start) * prog
        u = u0 + (u_hit - u0) * min(prog, 1.0) ** 1.5
        if outcome == "gutter" and t > t_div:
            u = u + (side * 0.9 - u) * _smoothstep((t - t_div) / n_drop)
        if v > 1.02:
            return None
        return u, v

    lane_pts = [cam(-0.8, 0), cam(0.8, 0), cam(0.8, 1), cam(-0.8, 1)]

    def draw(t: int, img: np.ndarray, masks: dict[str, np.ndarray]) -> None:
        ball_mask, pin_mask = masks["ball"], masks["pins"]
        _poly(img, [cam(-1.0, 0), cam(1.0, 0), cam(1.0, 1.02), cam(-1.0, 1.02)], gutter_color)
        _poly(img, lane_pts, lane_color)
        for ub in np.linspace(-0.7, 0.7, 8):
            _line(img, cam(ub, 0), cam(ub, 1), tuple(int(c * board_shade) for c in lane_color))
        x0, y_far = cam(-1.2, 1.02)
        x1, _ = cam(1.2, 1.02)
        cv2.rectangle(img, _p(x0, y_far - S * 0.2), _p(x1, y_far), deck_color, -1, cv2.LINE_8, SHIFT)
        ball = ball_at(t)
        # Painter's order: far to near; the ball is drawn after the pins it is in front of.
        drawables: list[tuple[float, Callable[[], None]]] = []
        for (u, v), (du, dv, delay, spin) in zip(pins, scatter):
            fallen = outcome == "strike" and t >= t_hit + delay
            if fallen:
                k = t - t_hit - delay + 1
                u, v = u + du * 0.08 * k, v + dv * 0.05 * k
                if abs(u) > 1.3 or v > 1.1:
                    continue
            drawables.append(
                (
                    v,
                    lambda u=u, v=v, fallen=fallen, spin=spin: _draw_pin(
                        img, pin_mask, cam, u, v, S, fallen, spin, pin_band
                    ),
                )
            )
        if ball is not None:
            ub, vb = ball
            drawables.append(
                (vb - 0.015, lambda ub=ub, vb=vb: _draw_ball(img, ball_mask, cam, ub, vb, S * 0.1, ball_color))
            )
        for _, paint in sorted(drawables, key=lambda d: -d[0]):
            paint()

    video, out_masks = stage.render(("ball", "pins"), draw)
    return Clip(video, out_masks, {"divergence_frame": t_div + 1, "impact_frame": t_hit, "start_frame": t0})


def _draw_ball(img, mask, cam: Perspective, u: float, v: float, radius: float, color) -> None:
    x, y = cam(u, v)
    r = radius * cam.scale(v)
    _circle(img, x, y - r, r, color)
    _circle(img, x - 0.3 * r, y - 1.35 * r, 0.18 * r, tuple(min(255, c + 90) for c in color))
    _circle(mask, x, y - r, r, 255, aa=False)


def _draw_pin(img, mask, cam: Perspective, u: float, v: float, S: int, fallen: bool, spin: float, band) -> None:
    x, y = cam(u, v)
    h = S * 0.3 * cam.scale(v)
    w = h * 0.33
    white = (245, 245, 240)
    if fallen:
        _ellipse(img, x, y - w * 0.5, h * 0.5, w * 0.5, spin * 0.2, white)
        _ellipse(mask, x, y - w * 0.5, h * 0.5, w * 0.5, spin * 0.2, 255, aa=False)
        return
    _ellipse(img, x, y - h * 0.35, w * 0.5, h * 0.35, 0, white)
    _ellipse(img, x, y - h * 0.82, w * 0.3, h * 0.18, 0, white)
    _line(img, (x - w * 0.28, y - h * 0.66), (x + w * 0.28, y - h * 0.66), band, max(1, int(h * 0.05)))
    _ellipse(mask, x, y - h * 0.35, w * 0.5, h * 0.35, 0, 255, aa=False)
    _ellipse(mask, x, y - h * 0.82, w * 0.3, h * 0.18, 0, 255, aa=False)


# ----------------------------------------------------------------------------------------- golf
def _golf(seed: int, outcome: str, T: int, S: int) -> Clip:
    rng = _rng("golf putting", seed)
    green = _color(rng, (40, 110, 30), (110, 190, 80))
    stage = Stage(rng, S, T, _color(rng, (20, 60, 20), (90, 140, 90)), texture=18.0)
    off = stage.margin
    cam = Perspective(
        cx=off + S * rng.uniform(0.42, 0.58),
        horizon=off + S * rng.uniform(-0.25, 0.0),
        near_y=off + S * rng.uniform(1.0, 1.1),
        half_width=S * rng.uniform(0.9, 1.3),
        depth_ratio=rng.uniform(1.6, 2.3),
    )
    stripe = rng.uniform(0.84, 0.93)
    n_stripes = int(rng.integers(4, 9))
    hole_u, hole_v = rng.uniform(-0.25, 0.25), rng.uniform(0.6, 0.8)
    hole_r = rng.uniform(0.04, 0.055)
    ball_color = _color(rng, (225, 225, 215), (255, 255, 255))
    flag = rng.random() < 0.6
    flag_color = _color(rng, (150, 0, 0), (255, 255, 60))
    t0 = int(rng.integers(0, max(1, T // 8) + 1))
    n_arrive = int(round(T * rng.uniform(0.45, 0.6)))
    start_u, start_v = hole_u + rng.uniform(-0.3, 0.3), rng.uniform(0.04, 0.12)
    overshoot = rng.uniform(1.2, 1.45)  # where a missed putt stops, in units of the hole distance
    t_div = t0 + int(round(n_arrive * rng.uniform(0.3, 0.45)))
    miss_side = rng.choice([-1.0, 1.0]) * rng.uniform(2.2, 3.2) * hole_r

    # Decelerating roll: distance fraction d(t) = overshoot * (1 - (1 - tau)^2), reaching 1 at n_arrive.
    tau_arrive = 1 - np.sqrt(1 - 1 / overshoot)
    n_stop = n_arrive / tau_arrive

    def ball_at(t: int):
        if t < t0:
            return (start_u, start_v, 1.0)
        tau = min(1.0, (t - t0) / n_stop)
        d = overshoot * (1 - (1 - tau) ** 2)
        u = start_u + (hole_u - start_u) * d
        v = start_v + (hole_v - start_v) * d
        if outcome == "miss" and t > t_div:
            u += miss_side * _smoothstep((t - t_div) / (t0 + n_arrive - t_div))
        if outcome == "in" and t >= t0 + n_arrive:
            k = t - (t0 + n_arrive)  # it drops: shrinks for two frames, then is gone
            return (hole_u, hole_v, max(0.0, 1 - 0.45 * (k + 1))) if k < 2 else None
        return (u, v, 1.0)

    def draw(t: int, img: np.ndarray, masks: dict[str, np.ndarray]) -> None:
        ball_mask, hole_mask = masks["ball"], masks["hole"]
        for i in range(n_stripes):
            va, vb = i / n_stripes, (i + 1) / n_stripes
            col = green if i % 2 == 0 else tuple(int(c * stripe) for c in green)
            _poly(img, [cam(-1.5, va), cam(1.5, va), cam(1.5, vb), cam(-1.5, vb)], col)
        hx, hy = cam(hole_u, hole_v)
        hr = S * hole_r * 2.2 * cam.scale(hole_v)
        _ellipse(img, hx, hy, hr, hr * 0.45, 0, (20, 25, 20))
        _ellipse(hole_mask, hx, hy, hr, hr * 0.45, 0, 255, aa=False)
        ball = ball_at(t)
        if ball is not None:
            u, v, size = ball
            x, y = cam(u, v)
            r = S * 0.045 * cam.scale(v) * size
            _ellipse(img, x + r * 0.4, y, r, r * 0.4, 0, tuple(int(c * 0.7) for c in green))  # shadow
            _circle(img, x, y - r * 0.8, r, ball_color)
            _circle(ball_mask, x, y - r * 0.8, r, 255, aa=False)
        if flag:
            _line(img, (hx, hy), (hx, hy - S * 0.35 * cam.scale(hole_v)), (230, 230, 230), 2)
            top = hy - S * 0.35 * cam.scale(hole_v)
            _poly(img, [(hx, top), (hx + S * 0.08, top + S * 0.03), (hx, top + S * 0.06)], flag_color)

    video, out_masks = stage.render(("ball", "hole"), draw)
    return Clip(video, out_masks, {"divergence_frame": t_div + 1, "arrival_frame": t0 + n_arrive, "start_frame": t0})


# ----------------------------------------------------------------------------------------- basketball
def _basketball(seed: int, outcome: str, T: int, S: int) -> Clip:
    rng = _rng("shooting basketball", seed)
    stage = Stage(rng, S, T, _color(rng, (60, 60, 70), (200, 190, 180)), texture=16.0)
    off = stage.margin
    facing = rng.choice([-1.0, 1.0])  # hoop on the right (1) or left (-1)
    floor_y = off + S * rng.uniform(0.82, 0.92)
    rim_x = off + S * (0.5 + facing * rng.uniform(0.22, 0.32))
    rim_y = off + S * rng.uniform(0.25, 0.4)
    rim_w = S * rng.uniform(0.09, 0.12)
    ball_r = rim_w * rng.uniform(0.3, 0.36)
    start_x = off + S * (0.5 - facing * rng.uniform(0.15, 0.35))
    start_y = floor_y - S * rng.uniform(0.3, 0.45)
    apex = rng.uniform(0.06, 0.14) * S
    floor_color = _color(rng, (120, 80, 40), (210, 170, 120))
    board_color = _color(rng, (200, 200, 200), (255, 255, 255))
    ball_color = _color(rng, (200, 90, 20), (240, 140, 60))
    t0 = int(rng.integers(0, max(1, T // 8) + 1))
    n_flight = int(round(T * rng.uniform(0.45, 0.55)))
    t_div = t0 + int(round(n_flight * rng.uniform(0.4, 0.55)))
    miss_dx = facing * rng.uniform(0.55, 0.8) * rim_w  # a miss comes up short or long by this much
    miss_dx *= rng.choice([-1.0, 1.0])
    bounce = rng.uniform(0.4, 0.7)

    def ball_at(t: int):
        if t < t0:
            return start_x, start_y
        tau = (t - t0) / n_flight
        target_x = rim_x
        if outcome == "miss" and t > t_div:
            target_x = rim_x + miss_dx * _smoothstep((t - t_div) / (t0 + n_flight - t_div))
        if tau <= 1:
            x = start_x + (target_x - start_x) * tau
            top = min(start_y, rim_y) - apex
            # Parabola through start (tau 0), apex, rim height (tau 1).
            y = (
                (1 - tau) ** 2 * start_y
                + 2 * (1 - tau) * tau * (2 * top - 0.5 * (start_y + rim_y))
                + tau**2 * (rim_y - ball_r)
            )
            return x, y
        k = (t - t0 - n_flight) / T
        if outcome == "make":  # through the net, then down
            return rim_x, rim_y - ball_r + k * S * 2.2
        # off the rim: bounce away and fall
        return rim_x + miss_dx + facing * (-1) * bounce * k * S * 1.2, rim_y - ball_r - k * S * 0.8 + (
            k * 7
        ) ** 2 * S * 0.05

    def draw(t: int, img: np.ndarray, masks: dict[str, np.ndarray]) -> None:
        ball_mask, hoop_mask = masks["ball"], masks["hoop"]
        cv2.rectangle(img, _p(0, floor_y), _p(img.shape[1], img.shape[0]), floor_color, -1, cv2.LINE_8, SHIFT)
        bx = rim_x + facing * rim_w * 0.6
        cv2.rectangle(
            img,
            _p(bx - S * 0.01, rim_y - S * 0.14),
            _p(bx + S * 0.01, rim_y + S * 0.04),
            board_color,
            -1,
            cv2.LINE_8,
            SHIFT,
        )
        _line(img, (bx, rim_y + S * 0.04), (bx, floor_y), (90, 90, 90), 3)
        for i in range(5):  # net
            a = rim_x - rim_w / 2 + i * rim_w / 4
            _line(img, (a, rim_y), (rim_x - rim_w / 4 + i * rim_w / 8, rim_y + rim_w * 0.7), (235, 235, 235))
        _line(img, (rim_x - rim_w / 2, rim_y), (rim_x + rim_w / 2, rim_y), (230, 80, 20), 3)
        _ellipse(hoop_mask, rim_x, rim_y + rim_w * 0.3, rim_w * 0.55, rim_w * 0.45, 0, 255, aa=False)
        x, y = ball_at(t)
        if -ball_r < y < img.shape[0] + ball_r:
            _circle(img, x, y, ball_r, ball_color)
            _line(img, (x - ball_r, y), (x + ball_r, y), (40, 20, 10))
            _circle(ball_mask, x, y, ball_r, 255, aa=False)

    video, out_masks = stage.render(("ball", "hoop"), draw)
    return Clip(video, out_masks, {"divergence_frame": t_div + 1, "arrival_frame": t0 + n_flight, "start_frame": t0})


# ----------------------------------------------------------------------------------------- juggling
def _juggling(seed: int, outcome: str, T: int, S: int) -> Clip:
    rng = _rng("juggling balls", seed)
    stage = Stage(rng, S, T, _color(rng, (30, 30, 30), (220, 220, 220)), texture=10.0)
    off = stage.margin
    cx, hand_y = off + S * rng.uniform(0.4, 0.6), off + S * rng.uniform(0.6, 0.72)
    spread = S * rng.uniform(0.13, 0.2)
    height = S * rng.uniform(0.3, 0.45)
    n_balls = int(rng.integers(3, 6))
    period = rng.uniform(0.35, 0.6) * T  # frames per full cycle
    phase = rng.uniform(0, 1)
    ball_r = S * rng.uniform(0.035, 0.05)
    colors = [_color(rng, (40, 40, 40), (255, 255, 255)) for _ in range(n_balls)]
    skin = _color(rng, (120, 70, 40), (255, 210, 180))
    shirt = _color(rng, (0, 0, 0), (255, 255, 255))
    thick = max(2, int(S * 0.03))

    def draw(t: int, img: np.ndarray, masks: dict[str, np.ndarray]) -> None:
        ball_mask, body_mask = masks["ball"], masks["juggler"]
        hand_dy = S * 0.02 * np.sin(2 * np.pi * (t / period * n_balls / 2))
        shoulder_y, hip_y = hand_y - S * 0.12, hand_y + S * 0.25
        for canvas, col in ((img, shirt), (body_mask, 255)):  # the juggler: torso, arms, head
            cv2.rectangle(canvas, _p(cx - S * 0.09, shoulder_y), _p(cx + S * 0.09, hip_y), col, -1, cv2.LINE_8, SHIFT)
            for hx in (cx - spread, cx + spread):
                _line(
                    canvas,
                    (cx - np.sign(cx - hx) * S * 0.08, shoulder_y + S * 0.02),
                    (hx, hand_y + hand_dy),
                    col,
                    thick,
                )
        _circle(img, cx, shoulder_y - S * 0.08, S * 0.065, skin)
        _circle(body_mask, cx, shoulder_y - S * 0.08, S * 0.065, 255, aa=False)
        for hx in (cx - spread, cx + spread):
            _ellipse(img, hx, hand_y + hand_dy, S * 0.05, S * 0.03, 0, skin)
        for i in range(n_balls):
            s = ((t / period) + phase + i / n_balls) % 1.0  # cascade: each ball crosses hand to hand
            leg = int(s * 2)
            f = (s * 2) % 1.0
            x0, x1 = (cx - spread, cx + spread) if leg == 0 else (cx + spread, cx - spread)
            x = x0 + (x1 - x0) * f
            y = hand_y - 4 * height * f * (1 - f)
            _circle(img, x, y, ball_r, colors[i])
            _circle(ball_mask, x, y, ball_r, 255, aa=False)

    video, out_masks = stage.render(("ball", "juggler"), draw)
    return Clip(video, out_masks, {})


# ----------------------------------------------------------------------------------------- pendulum
def _pendulum(seed: int, outcome: str, T: int, S: int) -> Clip:
    rng = _rng("swinging pendulum", seed)
    stage = Stage(rng, S, T, _color(rng, (30, 30, 30), (230, 230, 230)), texture=8.0)
    off = stage.margin
    px, py = off + S * rng.uniform(0.35, 0.65), off + S * rng.uniform(0.08, 0.2)
    length = S * rng.uniform(0.45, 0.65)
    beam = _color(rng, (40, 20, 0), (140, 110, 90))
    amp = np.deg2rad(rng.uniform(20, 55))
    period = rng.uniform(0.4, 0.9) * T
    phi = rng.uniform(0, 2 * np.pi)
    damping = rng.uniform(0.0, 1.5) / T
    bob_r = S * rng.uniform(0.07, 0.1)
    bob_color = _color(rng, (0, 0, 0), (255, 255, 255))
    string_color = _color(rng, (0, 0, 0), (255, 255, 255))

    def draw(t: int, img: np.ndarray, masks: dict[str, np.ndarray]) -> None:
        bob_mask = masks["bob"]
        theta = amp * np.exp(-damping * t) * np.cos(2 * np.pi * t / period + phi)
        bx, by = px + length * np.sin(theta), py + length * np.cos(theta)
        cv2.rectangle(img, _p(0, py - S * 0.08), _p(img.shape[1], py), beam, -1, cv2.LINE_8, SHIFT)
        _line(img, (px, py), (bx, by), string_color, max(2, int(S * 0.02)))
        _circle(img, bx, by, bob_r, bob_color)
        _circle(bob_mask, bx, by, bob_r, 255, aa=False)

    video, out_masks = stage.render(("bob",), draw)
    return Clip(video, out_masks, {})


# ----------------------------------------------------------------------------------------- skipping rope
def _skipping(seed: int, outcome: str, T: int, S: int) -> Clip:
    rng = _rng("skipping rope", seed)
    stage = Stage(rng, S, T, _color(rng, (30, 30, 30), (230, 230, 230)), texture=8.0)
    off = stage.margin
    cx, ground = off + S * rng.uniform(0.4, 0.6), off + S * rng.uniform(0.82, 0.92)
    floor = _color(rng, (20, 20, 20), (200, 200, 200))
    h = S * rng.uniform(0.45, 0.65)  # figure height
    period = rng.uniform(0.2, 0.4) * T
    phase = rng.uniform(0, 1)
    body = _color(rng, (0, 0, 0), (255, 255, 255))
    rope = _color(rng, (0, 0, 0), (255, 255, 255))
    jump = S * rng.uniform(0.03, 0.07)

    def draw(t: int, img: np.ndarray, masks: dict[str, np.ndarray]) -> None:
        fig_mask, rope_mask = masks["figure"], masks["rope"]
        cv2.rectangle(img, _p(0, ground), _p(img.shape[1], img.shape[0]), floor, -1, cv2.LINE_8, SHIFT)
        a = 2 * np.pi * (t / period + phase)
        lift = jump * max(0.0, np.sin(a))  # in the air while the rope passes under
        feet = ground - lift
        hip, shoulder, head = feet - 0.45 * h, feet - 0.78 * h, feet - 0.9 * h
        for img_, col, th in ((img, body, max(2, int(S * 0.03))), (fig_mask, 255, max(2, int(S * 0.03)))):
            _line(img_, (cx, hip), (cx, shoulder), col, th)
            _line(img_, (cx, hip), (cx - h * 0.1, feet), col, th)
            _line(img_, (cx, hip), (cx + h * 0.1, feet), col, th)
            _line(img_, (cx, shoulder + h * 0.05), (cx - h * 0.22, hip), col, th)
            _line(img_, (cx, shoulder + h * 0.05), (cx + h * 0.22, hip), col, th)
        _circle(img, cx, head, h * 0.08, body)
        _circle(fig_mask, cx, head, h * 0.08, 255, aa=False)
        # The rope: an arc between the hands whose lowest point circles the figure.
        hands = ((cx - h * 0.22, hip), (cx + h * 0.22, hip))
        sag = np.cos(a)  # +1 under the feet, -1 over the head
        mid_y = hip + sag * (feet - hip + S * 0.02) if sag > 0 else hip + sag * (hip - head + S * 0.04)
        pts = [
            (
                hands[0][0] + (hands[1][0] - hands[0][0]) * s,
                (1 - s) ** 2 * hip + 2 * (1 - s) * s * (2 * mid_y - hip) + s**2 * hip,
            )
            for s in np.linspace(0, 1, 12)
        ]
        for p, q in zip(pts, pts[1:]):
            _line(img, p, q, rope, max(2, int(S * 0.025)))
            _line(rope_mask, p, q, 255, max(2, int(S * 0.025)))

    video, out_masks = stage.render(("figure", "rope"), draw)
    return Clip(video, out_masks, {})


_RENDERERS: dict[str, Callable[[int, str, int, int], Clip]] = {
    "bowling": _bowling,
    "golf putting": _golf,
    "shooting basketball": _basketball,
    "juggling balls": _juggling,
    "swinging pendulum": _pendulum,
    "skipping rope": _skipping,
}


# ----------------------------------------------------------------------------------------- public API
def _resolve_action(action: str) -> str:
    action = DOMAINS.get(action, action)
    if action not in _RENDERERS:
        raise ValueError(f"unknown action {action!r}; known: {sorted(_RENDERERS)} (domains: {sorted(DOMAINS)})")
    return action


def render_clip(action: str, seed: int, *, outcome: str | None = None, num_frames: int = 32, size: int = 224) -> Clip:
    """One clip of ``action``. For actions with outcomes, ``outcome`` defaults to one drawn from the seed."""
    action = _resolve_action(action)
    if num_frames < 8 or size < 32:
        raise ValueError(f"need num_frames >= 8 and size >= 32, got {num_frames} and {size}")
    outcomes = OUTCOMES.get(action, ("none",))
    if outcome is None:
        outcome = outcomes[int(_rng(action, seed, "outcome").integers(len(outcomes)))]
    if outcome not in outcomes:
        raise ValueError(f"{action!r} has outcomes {outcomes}, got {outcome!r}")
    clip = _RENDERERS[action](int(seed), outcome, num_frames, size)
    clip.meta.update(action=action, outcome=outcome, seed=int(seed), num_frames=num_frames, size=size)
    return clip


def render_pair(domain: str, seed: int, num_frames: int = 32, size: int = 224) -> tuple[np.ndarray, np.ndarray, dict]:
    """(positive, negative, meta): two clips identical before ``meta["divergence_frame"]`` that differ
    only in the outcome. ``meta["masks"]`` holds {"positive": {...}, "negative": {...}} per-frame
    boolean masks [T, H, W] of the objects (ball, pins, hole, ...)."""
    action = _resolve_action(domain)
    if action not in OUTCOMES:
        raise ValueError(f"{action!r} has no outcome to contrast; pairs exist for {sorted(DOMAINS)}")
    pos_name, neg_name = OUTCOMES[action]
    pos = render_clip(action, seed, outcome=pos_name, num_frames=num_frames, size=size)
    neg = render_clip(action, seed, outcome=neg_name, num_frames=num_frames, size=size)
    meta = {
        "domain": action,
        "seed": int(seed),
        "outcomes": {"positive": pos_name, "negative": neg_name},
        "divergence_frame": pos.meta["divergence_frame"],
        "num_frames": num_frames,
        "size": size,
        "masks": {"positive": pos.masks, "negative": neg.masks},
        **{k: v for k, v in pos.meta.items() if k.endswith("_frame") and k != "divergence_frame"},
    }
    return pos.frames, neg.frames, meta


def frame_grid(clips: list[np.ndarray], frames: list[int] | None = None, labels: list[str] | None = None) -> np.ndarray:
    """A picture: one row per clip, the chosen frames side by side (uint8 RGB)."""
    T = clips[0].shape[0]
    frames = frames if frames is not None else list(np.linspace(0, T - 1, 8).round().astype(int))
    rows = []
    for i, clip in enumerate(clips):
        row = np.concatenate([np.pad(clip[t], ((2, 2), (2, 2), (0, 0)), constant_values=255) for t in frames], axis=1)
        if labels:
            row = np.ascontiguousarray(row)
            cv2.putText(row, labels[i], (8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 2, cv2.LINE_AA)
        rows.append(row)
    return np.concatenate(rows, axis=0)

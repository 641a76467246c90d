"""Procedurally generated, captioned clips for the built-in demo model (seeded, no downloads).

A clip is one object (a ball or a square, one of five colours) moving in a straight line at a
constant speed over a black or gray background: `F` frames of `H`×`W` RGB, uint8, anti-aliased
(4×4 supersampling). Its caption is "a {colour} {object} moving {direction} on {background}".

Two kinds of clips:
* text-to-video clips follow the caption's FIXED path (`fixed_start`): "moving right" starts
  left of centre and ends right of centre on the middle row, and so on. Each caption then names
  exactly one clip, which a tiny DiT can learn (random starts made it average the paths).
* image-to-video clips start anywhere the whole path stays inside the frame (`random_start`): the
  first frame is given, the model continues the motion the caption names.

The measurement the tests use (`measure`) lives here too, so the training script's evaluation and
the Rust semantic tests (tests/tests/demo_semantics.rs, same thresholds) judge a clip the same way.
"""
import itertools

import numpy as np

COLOURS = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (40, 90, 240),
    "yellow": (240, 220, 40),
    "white": (250, 250, 250),
}
OBJECTS = ("ball", "square")
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
BACKGROUNDS = {"black": (0, 0, 0), "gray": (110, 110, 110)}

H = W = 64  # the demo's default size (multiples of 32: the Wan2.2 VAE's 16 × the DiT's 2×2 patch)
F = 9  # frames (4k + 1)
RADIUS = 7  # ball radius / half the square's side, px
SPEED = 4.0  # px per frame: (F - 1) · SPEED = 32 px of travel

TEMPLATE = "a {colour} {object} moving {direction} on {background}"


def caption(colour, obj, direction, background):
    return TEMPLATE.format(colour=colour, object=obj, direction=direction, background=background)


def all_captions():
    """The 80 captions (colour × object × direction × background), in a fixed order."""
    return [
        (c, o, d, b)
        for c, o, d, b in itertools.product(COLOURS, OBJECTS, DIRECTIONS, BACKGROUNDS)
    ]


def travel(frames=F):
    return (frames - 1) * SPEED


def fixed_start(direction, h=H, w=W, frames=F):
    """The start (x, y) of the caption's fixed path: centred on the frame's middle, travelling
    `travel()` px in `direction`."""
    dx, dy = DIRECTIONS[direction]
    half = travel(frames) / 2
    return (w / 2 - dx * half, h / 2 - dy * half)


def random_start(direction, rng, h=H, w=W, frames=F):
    """A start (x, y) from which the whole path stays inside the frame (object included)."""
    dx, dy = DIRECTIONS[direction]
    m = RADIUS + 1
    span = travel(frames)
    lo_x, hi_x = m + max(0, -dx) * span, w - m - max(0, dx) * span
    lo_y, hi_y = m + max(0, -dy) * span, h - m - max(0, dy) * span
    return (float(rng.uniform(lo_x, hi_x)), float(rng.uniform(lo_y, hi_y)))


def coverage(obj, cx, cy, h=H, w=W, ss=4):
    """Fraction of each pixel covered by the object centred at (cx, cy): (h, w) float32."""
    # pixel (i, j) covers [j, j+1) × [i, i+1); sample ss×ss points inside it
    offs = (np.arange(ss) + 0.5) / ss
    ys = (np.arange(h)[:, None] + offs[None, :]).reshape(-1)
    xs = (np.arange(w)[:, None] + offs[None, :]).reshape(-1)
    X, Y = np.meshgrid(xs, ys)
    if obj == "ball":
        inside = (X - cx) ** 2 + (Y - cy) ** 2 <= RADIUS ** 2
    elif obj == "square":
        inside = (np.abs(X - cx) <= RADIUS) & (np.abs(Y - cy) <= RADIUS)
    else:
        raise ValueError(obj)
    return inside.reshape(h, ss, w, ss).mean(axis=(1, 3)).astype(np.float32)


def render(colour, obj, direction, background, start, h=H, w=W, frames=F):
    """(frames, h, w, 3) uint8."""
    dx, dy = DIRECTIONS[direction]
    fg = np.array(COLOURS[colour], np.float32)
    bg = np.array(BACKGROUNDS[background], np.float32)
    out = np.empty((frames, h, w, 3), np.uint8)
    for f in range(frames):
        cx, cy = start[0] + dx * SPEED * f, start[1] + dy * SPEED * f
        a = coverage(obj, cx, cy, h, w)[..., None]
        out[f] = np.round(a * fg + (1 - a) * bg).clip(0, 255).astype(np.uint8)
    return out


def random_clip(rng, fixed_prob=0.25, h=H, w=W, frames=F):
    """(caption parts, clip) with random attributes; the fixed path with `fixed_prob`."""
    c = rng.choice(list(COLOURS))
    o = rng.choice(list(OBJECTS))
    d = rng.choice(list(DIRECTIONS))
    b = rng.choice(list(BACKGROUNDS))
    start = fixed_start(d, h, w, frames) if rng.random() < fixed_prob else random_start(d, rng, h, w, frames)
    return (str(c), str(o), str(d), str(b)), render(c, o, d, b, start, h, w, frames)


# ------------------------------------------------------------------------------------------------
# Measuring a generated clip (the same rules as tests/tests/demo_semantics.rs)

MASK_THRESHOLD = 60.0  # RGB distance (0..255 scale) from the background that counts as object
MIN_MOVE = 8.0  # px the centroid must travel along the named axis (the path is 32 px)


def measure(frames):
    """frames (F, h, w, 3) uint8 or float in [0, 255]. Returns a dict: background (nearest of the
    two), per-frame object area and centroid, the object's mean colour over all frames, its
    nearest named colour, the centroid's motion first → last frame and its direction."""
    v = np.asarray(frames, np.float32)
    border = np.concatenate([v[:, 0], v[:, -1], v[:, :, 0], v[:, :, -1]], axis=1).reshape(-1, 3)
    bg_rgb = np.median(border, axis=0)
    bg = min(BACKGROUNDS, key=lambda k: np.linalg.norm(bg_rgb - np.array(BACKGROUNDS[k])))
    dist = np.linalg.norm(v - bg_rgb, axis=-1)
    mask = dist > MASK_THRESHOLD
    areas = mask.sum(axis=(1, 2))
    ys, xs = np.mgrid[0 : v.shape[1], 0 : v.shape[2]]
    cents = []
    for f in range(v.shape[0]):
        m = mask[f]
        cents.append((float((xs * m).sum() / max(m.sum(), 1)), float((ys * m).sum() / max(m.sum(), 1))))
    # The colour from the object's core (pixels at least 3/4 as far from the background as the
    # farthest one of their frame): edge pixels are blends with the background (dark yellow would
    # be nearer red).
    core = np.zeros_like(mask)
    for f in range(v.shape[0]):
        if mask[f].any():
            core[f] = mask[f] & (dist[f] >= 0.75 * dist[f].max())
    mean_rgb = v[core].mean(axis=0) if core.any() else np.zeros(3)
    colour = min(COLOURS, key=lambda k: np.linalg.norm(mean_rgb - np.array(COLOURS[k])))
    dx, dy = cents[-1][0] - cents[0][0], cents[-1][1] - cents[0][1]
    if max(abs(dx), abs(dy)) < MIN_MOVE:
        direction = "still"
    elif abs(dx) >= abs(dy):
        direction = "right" if dx > 0 else "left"
    else:
        direction = "down" if dy > 0 else "up"
    return dict(background=bg, areas=areas.tolist(), centroids=cents, mean_rgb=mean_rgb.tolist(),
                colour=colour, motion=(dx, dy), direction=direction)

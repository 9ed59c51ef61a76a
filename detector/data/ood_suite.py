"""The far-OOD suite: deterministic test sets unlike the data a detector was tuned on, at 1x28x28 and 3x64x64.

A development aid for choosing and checking scores (scripts/bench_quality.py); acceptance uses other,
hidden sets, so each set here is made as varied as it can be from what can be drawn or installed:

simpler than garments or objects
    ``handwriting``  digits drawn as pen strokes (several hands: stroke templates with jitter) and in
                     handwriting fonts, pen width and sharpness varied, elastically distorted, laid out as
                     MNIST is (20x20 box centred by mass in 28x28; ink on paper in RGB)
    ``letters``      letters and symbols in the same hands and fonts
    ``sketches``     line drawings: outlines of shapes, doodles, houses, stars, spirals
    ``blank``        constant frames, and near-blank ones (faint noise, a gradient, a speck)
more complex
    ``photos``       patches of scikit-image's photographs, resized from several scales
    ``textures``     patches of scikit-image's textures and procedural gratings and checks
    ``noise``        uniform, Gaussian, salt-and-pepper and smoothed noise

Every generator is ``make(n, shape, seed) -> uint8 (n, C, H, W)`` for ``shape`` (1, 28, 28) or (3, 64, 64)
(any (C, H, W) with C in 1, 3 works). ``coloured_objects`` is the RGB in-distribution set the RGB suite
is measured against. Fonts come from Debian's font packages (scripts/setup.sh installs them); glyphs
fall back to the stroke hands alone where none is installed.
"""

from __future__ import annotations

import glob
import math
from functools import lru_cache
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFont

Shape = tuple[int, int, int]
CANVAS = 112  # glyphs and drawings are made at 4x the 28x28 size and downsampled, as a scanned pen stroke is
HAND_FONT_GLOBS = ("fifthhorseman/dkg*.ttf", "breip/*.ttf", "bwht/*.otf", "humor-sans/*.ttf", "comic-neue/*.otf",
                   "femkeklaver/*.ttf", "kristi/*.ttf", "klee/*.ttf", "dancingscript/*.otf", "urw-base35/Z003*.otf",
                   "freefont/FreeSans*.ttf", "freefont/FreeSerif*.ttf", "dejavu/DejaVuSans*.ttf")


@lru_cache(maxsize=1)
def hand_fonts() -> tuple[str, ...]:
    """Paths of the installed handwriting (and a few printed) fonts, sorted so that draws are reproducible."""
    found: list[str] = []
    for pattern in HAND_FONT_GLOBS:
        found += glob.glob(f"/usr/share/fonts/*/{pattern}")
    return tuple(sorted(set(found)))


# --- pen strokes ------------------------------------------------------------------------------------------

def _arc(cx, cy, rx, ry, a0, a1, n=24):
    t = np.linspace(math.radians(a0), math.radians(a1), n)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], 1)


def _line(*pts):
    return np.asarray(pts, dtype=np.float64)


def _digit_strokes(d: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Strokes of digit ``d`` in a unit box (x right, y down), with the shape's own proportions varied."""
    u = lambda a, b: rng.uniform(a, b)  # noqa: E731
    if d == 0:
        return [_arc(0.5, 0.5, u(0.25, 0.4), u(0.42, 0.5), -90, 275 + u(0, 30), 40)]
    if d == 1:
        top = u(0.45, 0.6)
        strokes = [_line((top, 0.02), (u(0.4, 0.55), 0.98))]
        if rng.random() < 0.5:
            strokes.append(_line((top - u(0.1, 0.25), 0.2), (top, 0.02)))
        return strokes
    if d == 2:
        return [np.concatenate([_arc(0.5, 0.3, 0.3, 0.27, 200, 380), _line((0.78, 0.4), (0.18, 0.97), (0.88, 0.95))])]
    if d == 3:
        return [np.concatenate([_arc(0.48, 0.27, 0.28, 0.24, 200, 450), _arc(0.48, 0.72, u(0.3, 0.36), 0.26, -90, 150)])]
    if d == 4:
        x = u(0.55, 0.7)
        return [_line((x - 0.05, 0.02), (0.12, 0.66), (0.92, 0.64)), _line((x, 0.3), (x, 0.98))]
    if d == 5:
        return [_line((0.82, 0.04), (0.3, 0.04), (0.26, 0.45)), _arc(0.48, 0.67, 0.32, 0.28, -140, 150)]
    if d == 6:
        return [np.concatenate([_line((0.72, 0.02), (0.32, 0.45)), _arc(0.5, 0.7, 0.28, 0.26, 200, 560)])]
    if d == 7:
        strokes = [_line((0.1, 0.05), (0.9, 0.05), (u(0.35, 0.55), 0.98))]
        if rng.random() < 0.3:
            strokes.append(_line((0.35, 0.5), (0.8, 0.5)))
        return strokes
    if d == 8:
        return [_arc(0.5, 0.27, 0.24, 0.23, 90, 450), _arc(0.5, 0.72, 0.3, 0.26, -90, 270)]
    return [np.concatenate([_arc(0.48, 0.3, 0.27, 0.26, 0, 360), _line((0.75, 0.3), (u(0.5, 0.7), 0.98))])]


def _jitter(stroke: np.ndarray, rng: np.random.Generator, amount: float) -> np.ndarray:
    """A hand's wobble: a smooth random offset along the stroke, and the stroke resampled finely."""
    t = np.linspace(0, 1, len(stroke))
    fine = np.linspace(0, 1, max(8, 4 * len(stroke)))
    pts = np.stack([np.interp(fine, t, stroke[:, i]) for i in range(2)], 1)
    k = rng.normal(0, amount, (3, 2))
    for i, freq in enumerate((1, 2, 3)):
        pts += np.sin(np.pi * freq * fine + rng.uniform(0, np.pi))[:, None] * k[i] / freq
    return pts


def _draw_strokes(strokes: list[np.ndarray], width: float, size: int = CANVAS) -> Image.Image:
    img = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(img)
    m = 0.12 * size
    r = width / 2
    for s in strokes:
        pts = [(m + x * (size - 2 * m), m + y * (size - 2 * m)) for x, y in s]
        draw.line(pts, fill=255, width=max(1, int(round(width))), joint="curve")
        for x, y in (pts[0], pts[-1]):
            draw.ellipse((x - r, y - r, x + r, y + r), fill=255)
    return img


def _draw_glyph(char: str, font_path: str, rng: np.random.Generator, size: int = CANVAS) -> Image.Image:
    img = Image.new("L", (size, size), 0)
    font = ImageFont.truetype(font_path, int(size * rng.uniform(0.55, 0.75)))
    ImageDraw.Draw(img).text((size / 2, size / 2), char, fill=255, font=font, anchor="mm",
                             stroke_width=int(rng.integers(0, 5)), stroke_fill=255)
    return img


def _elastic(a: np.ndarray, rng: np.random.Generator, alpha: float, sigma: float) -> np.ndarray:
    """Elastic distortion (Simard et al. 2003): a smoothed random displacement field."""
    from scipy.ndimage import gaussian_filter, map_coordinates

    dy = gaussian_filter(rng.uniform(-1, 1, a.shape), sigma) * alpha
    dx = gaussian_filter(rng.uniform(-1, 1, a.shape), sigma) * alpha
    yy, xx = np.meshgrid(np.arange(a.shape[0]), np.arange(a.shape[1]), indexing="ij")
    return map_coordinates(a, [yy + dy, xx + dx], order=1, mode="constant")


def _affine(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Slant and turn as a hand does: rotation within 15 degrees, shear within 0.3."""
    img = img.rotate(rng.uniform(-15, 15), resample=Image.BILINEAR)
    shear = rng.uniform(-0.3, 0.3)
    c = img.size[0] / 2
    return img.transform(img.size, Image.AFFINE, (1, shear, -shear * c, 0, 1, 0), resample=Image.BILINEAR)


def _ink(img: Image.Image, rng: np.random.Generator) -> np.ndarray:
    """A drawn mark, slanted, distorted and blurred by a random amount: float [0, 1] (CANVAS, CANVAS)."""
    a = np.asarray(_affine(img, rng), np.float32) / 255.0
    if rng.random() < 0.7:
        a = _elastic(a, rng, alpha=rng.uniform(6, 14), sigma=rng.uniform(5, 8))
    if rng.random() < 0.3:  # a soft pencil rather than a felt pen
        from scipy.ndimage import gaussian_filter

        a = gaussian_filter(a, rng.uniform(1, 3))
        a = a / max(float(a.max()), 1e-6)
    return np.clip(a, 0, 1)


def _mnist_layout(a: np.ndarray, side: int, box_share: float = 20 / 28) -> np.ndarray:
    """The mark's bounding box scaled into box_share of a side x side frame (aspect kept), centred by its centre
    of mass, as MNIST was made: float [0, 1] (side, side)."""
    ys, xs = np.nonzero(a > 0.05)
    out = np.zeros((side, side), np.float32)
    if len(ys) == 0:
        return out
    crop = a[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    box = box_share * side
    scale = box / max(crop.shape)
    h, w = max(1, round(crop.shape[0] * scale)), max(1, round(crop.shape[1] * scale))
    small = np.asarray(Image.fromarray((crop * 255).astype(np.uint8)).resize((w, h), Image.LANCZOS), np.float32) / 255
    small = np.clip(small, 0, 1)
    total = small.sum()
    cy, cx = ((np.arange(h)[:, None] * small).sum() / total, (np.arange(w)[None, :] * small).sum() / total)
    top, left = int(round(side / 2 - cy)), int(round(side / 2 - cx))
    top, left = min(max(top, 0), side - h), min(max(left, 0), side - w)
    out[top:top + h, left:left + w] = small
    return out


def _marks(n: int, side: int, rng: np.random.Generator, draw_one: Callable[[np.random.Generator], Image.Image],
           ) -> np.ndarray:
    return np.stack([_mnist_layout(_ink(draw_one(rng), rng), side) for _ in range(n)])  # (n, side, side)


def _hand_or_font(chars: str, strokes_for: Callable[[str, np.random.Generator], list[np.ndarray] | None]):
    def draw_one(rng: np.random.Generator) -> Image.Image:
        ch = chars[int(rng.integers(len(chars)))]
        strokes = strokes_for(ch, rng)
        fonts = hand_fonts()
        if strokes is not None and (not fonts or rng.random() < 0.5):
            width = rng.uniform(5, 16)  # 1.2 to 4 pixels at 28x28
            return _draw_strokes([_jitter(s, rng, rng.uniform(0.005, 0.04)) for s in strokes], width)
        if not fonts:
            raise RuntimeError("no font is installed to draw letters: apt-get install fonts-dejavu-core")
        return _draw_glyph(ch, fonts[int(rng.integers(len(fonts)))], rng)
    return draw_one


def _digit_strokes_for(ch: str, rng: np.random.Generator) -> list[np.ndarray] | None:
    return _digit_strokes(int(ch), rng) if ch.isdigit() else None


# --- putting marks into frames ----------------------------------------------------------------------------

def _paper_and_ink(marks: np.ndarray, shape: Shape, rng: np.random.Generator) -> np.ndarray:
    """Marks (n, h, w) in [0, 1] into uint8 frames: light on black for one channel (as MNIST), coloured ink on
    tinted paper for three."""
    c, h, w = shape
    n = len(marks)
    if c == 1:
        return np.clip(np.rint(marks * 255), 0, 255).astype(np.uint8)[:, None]
    paper = rng.uniform(0.75, 1.0, (n, 3, 1, 1)) * np.ones((1, 3, h, w))
    ink = rng.uniform(0.0, 0.5, (n, 3, 1, 1))
    if rng.random() < 0.5:  # a share of the set light on dark (chalk on a board)
        dark = rng.random(n) < 0.3
        paper[dark], ink[dark] = 1 - paper[dark], 1 - ink[dark]
    img = paper * (1 - marks[:, None]) + ink * marks[:, None] + rng.normal(0, 0.01, (n, 1, h, w))
    return np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)


def _mark_frames(n: int, shape: Shape, seed: int, draw_one) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c, h, w = shape
    side = min(h, w)
    marks = _marks(n, side, rng, draw_one)
    if (h, w) != (side, side):
        marks = np.stack([np.asarray(Image.fromarray((m * 255).astype(np.uint8)).resize((w, h)), np.float32) / 255
                          for m in marks])
    return _paper_and_ink(marks, shape, rng)


def handwriting(n: int = 1000, shape: Shape = (1, 28, 28), seed: int = 0) -> np.ndarray:
    """Handwritten-looking digits 0-9 (simpler than garments)."""
    return _mark_frames(n, shape, seed, _hand_or_font("0123456789", _digit_strokes_for))


def letters(n: int = 1000, shape: Shape = (1, 28, 28), seed: int = 1) -> np.ndarray:
    """Letters and symbols (simpler)."""
    chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabdefghijkmnpqrtyz&@#%?!+=$<>{}"
    return _mark_frames(n, shape, seed, _hand_or_font(chars, lambda ch, rng: None))


def _sketch_strokes(rng: np.random.Generator) -> list[np.ndarray]:
    kind = int(rng.integers(6))
    if kind == 0:  # polygon outline
        k = int(rng.integers(3, 8))
        a = np.sort(rng.uniform(0, 2 * np.pi, k))
        r = rng.uniform(0.3, 0.5, k)
        pts = np.stack([0.5 + r * np.cos(a), 0.5 + r * np.sin(a)], 1)
        return [np.concatenate([pts, pts[:1]])]
    if kind == 1:  # star
        k = int(rng.integers(4, 8))
        a = np.linspace(0, 2 * np.pi, 2 * k + 1)
        r = np.where(np.arange(2 * k + 1) % 2 == 0, 0.48, rng.uniform(0.15, 0.3))
        return [np.stack([0.5 + r * np.sin(a), 0.5 - r * np.cos(a)], 1)]
    if kind == 2:  # house
        return [_line((0.15, 0.95), (0.15, 0.45), (0.5, 0.08), (0.85, 0.45), (0.85, 0.95), (0.15, 0.95)),
                _line((0.42, 0.95), (0.42, 0.7), (0.58, 0.7), (0.58, 0.95))]
    if kind == 3:  # spiral
        t = np.linspace(0, rng.uniform(3, 6) * np.pi, 80)
        r = 0.45 * t / t[-1]
        return [np.stack([0.5 + r * np.cos(t), 0.5 + r * np.sin(t)], 1)]
    if kind == 4:  # scribble: a random walk, smoothed
        steps = np.cumsum(rng.normal(0, 0.12, (int(rng.integers(6, 14)), 2)), 0)
        steps = (steps - steps.min(0)) / np.maximum(np.ptp(steps, 0), 1e-6)
        return [steps]
    # circles and a line: a face, a wheel, a lollipop
    return [_arc(0.5, 0.45, 0.35, 0.35, 0, 360), _arc(0.5, 0.45, rng.uniform(0.05, 0.2), rng.uniform(0.05, 0.2), 0, 360),
            _line((0.5, 0.8), (0.5, 1.0))]


def sketches(n: int = 1000, shape: Shape = (1, 28, 28), seed: int = 2) -> np.ndarray:
    """Line drawings and doodles (simpler)."""
    def draw_one(rng):
        return _draw_strokes([_jitter(s, rng, 0.01) for s in _sketch_strokes(rng)], rng.uniform(3, 10))
    return _mark_frames(n, shape, seed, draw_one)


def blank(n: int = 1000, shape: Shape = (1, 28, 28), seed: int = 3) -> np.ndarray:
    """Constant frames, and near-blank ones: faint noise, a soft gradient, a single speck (simpler)."""
    rng = np.random.default_rng(seed)
    c, h, w = shape
    level = rng.uniform(0, 1, (n, c, 1, 1)) * np.ones((1, 1, h, w))
    level[: n // 5] = 0  # a fifth all black, as an empty camera frame or a missing image
    kind = rng.integers(0, 4, n)
    yy, xx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    img = level.copy()
    noisy = kind == 1
    img[noisy] += rng.normal(0, 0.02, (int(noisy.sum()), c, h, w))
    grad = kind == 2
    angle = rng.uniform(0, 2 * np.pi, int(grad.sum()))
    img[grad] += 0.15 * (np.cos(angle)[:, None, None, None] * xx + np.sin(angle)[:, None, None, None] * yy)
    for i in np.flatnonzero(kind == 3):
        r, col = rng.integers(2, h - 3), rng.integers(2, w - 3)
        img[i, :, r:r + 2, col:col + 2] = 1 - img[i, :, r:r + 2, col:col + 2]
    return np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)


def _skimage(names: tuple[str, ...]) -> list[np.ndarray]:
    from skimage import data

    out = []
    for name in names:
        img = getattr(data, name)()
        out.append(np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img[..., :3])
    return out


def _patches(images: list[np.ndarray], n: int, shape: Shape, rng: np.random.Generator) -> np.ndarray:
    """Random square crops of several scales, resized to ``shape``, grey or RGB."""
    c, h, w = shape
    out = np.empty((n, c, h, w), np.uint8)
    for i in range(n):
        img = images[int(rng.integers(len(images)))]
        largest = min(img.shape[:2]) // 2
        side = int(rng.integers(min(h, w, largest - 1), largest))  # a frame larger than half the photo: upscaled
        r, col = rng.integers(0, img.shape[0] - side), rng.integers(0, img.shape[1] - side)
        patch = Image.fromarray(np.ascontiguousarray(img[r:r + side, col:col + side]))
        patch = patch.resize((w, h), Image.BILINEAR)
        out[i] = (np.asarray(patch.convert("L"))[None] if c == 1 else np.asarray(patch).transpose(2, 0, 1))
    return out


PHOTOS = ("camera", "astronaut", "coffee", "chelsea", "rocket", "coins", "moon", "page", "text", "hubble_deep_field",
          "immunohistochemistry", "retina", "cat", "colorwheel", "eagle", "horse", "logo")


def photos(n: int = 1000, shape: Shape = (1, 28, 28), seed: int = 4) -> np.ndarray:
    """Patches of natural photographs (more complex)."""
    names = tuple(p for p in PHOTOS if p not in ("horse", "logo", "colorwheel", "eagle"))
    return _patches(_skimage(names), n, shape, np.random.default_rng(seed))


def textures(n: int = 1000, shape: Shape = (1, 28, 28), seed: int = 5) -> np.ndarray:
    """Half patches of texture photographs, half procedural gratings and checks (more complex)."""
    rng = np.random.default_rng(seed)
    c, h, w = shape
    half = n // 2
    photo = _patches(_skimage(("brick", "grass", "gravel")), half, shape, rng)
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    procedural = np.empty((n - half, c, h, w), np.uint8)
    for i in range(n - half):
        freq, angle = rng.uniform(0.3, 1.5), rng.uniform(0, np.pi)
        u = np.cos(angle) * xx + np.sin(angle) * yy
        v = -np.sin(angle) * xx + np.cos(angle) * yy
        g = np.sin(freq * u) if rng.random() < 0.5 else np.sign(np.sin(freq * u) * np.sin(freq * v))
        g = g + rng.normal(0, 0.2, g.shape)
        colour = rng.uniform(0, 1, (c, 1, 1))
        procedural[i] = np.clip(np.rint((0.5 + 0.45 * g[None] * (0.5 + colour)) * 255), 0, 255)
    return np.concatenate([photo, procedural])[rng.permutation(n)]


def noise(n: int = 1000, shape: Shape = (1, 28, 28), seed: int = 6) -> np.ndarray:
    """Uniform, Gaussian, salt-and-pepper and smoothed noise, a quarter each (more complex)."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    c, h, w = shape
    q = n // 4
    uniform = rng.uniform(0, 1, (q, c, h, w))
    gauss = np.clip(rng.normal(rng.uniform(0.2, 0.8, (q, 1, 1, 1)), 0.2, (q, c, h, w)), 0, 1)
    salt = (rng.random((q, c, h, w)) < rng.uniform(0.05, 0.5, (q, 1, 1, 1))).astype(np.float64)
    smooth = rng.uniform(0, 1, (n - 3 * q, c, h, w))
    smooth = np.stack([gaussian_filter(s, (0, 1, 1)) for s in smooth])
    smooth = (smooth - smooth.min(axis=(1, 2, 3), keepdims=True)) / np.ptp(smooth, axis=(1, 2, 3), keepdims=True)
    img = np.concatenate([uniform, gauss, salt, smooth])[rng.permutation(n)]
    return np.rint(img * 255).astype(np.uint8)


# (name, kind relative to the training data, generator)
SUITE: tuple[tuple[str, str, Callable[..., np.ndarray]], ...] = (
    ("handwriting", "simpler", handwriting),
    ("letters", "simpler", letters),
    ("sketches", "simpler", sketches),
    ("blank", "simpler", blank),
    ("photos", "more complex", photos),
    ("textures", "more complex", textures),
    ("noise", "more complex", noise),
)


# --- the RGB in-distribution set ---------------------------------------------------------------------------

def coloured_objects(n: int, shape: Shape = (3, 64, 64), seed: int = 0) -> np.ndarray:
    """Scenes of one to three shaded, coloured objects (ellipses, polygons, rings, rounded boxes) over a
    smooth two-colour background, with a little sensor noise: uint8 (n, C, H, W)."""
    rng = np.random.default_rng(seed)
    c, h, w = shape
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    out = np.empty((n, c, h, w), np.uint8)
    for i in range(n):
        a, b = rng.uniform(0, 1, (2, 3, 1, 1))
        angle = rng.uniform(0, 2 * np.pi)
        t = np.clip(0.5 + (np.cos(angle) * (xx - 0.5) + np.sin(angle) * (yy - 0.5)), 0, 1)
        img = a * (1 - t) + b * t  # (3, h, w)
        for _ in range(int(rng.integers(1, 4))):
            mask = Image.new("L", (4 * w, 4 * h), 0)
            draw = ImageDraw.Draw(mask)
            cx, cy = rng.uniform(0.25, 0.75) * 4 * w, rng.uniform(0.25, 0.75) * 4 * h
            rx, ry = rng.uniform(0.12, 0.3) * 4 * w, rng.uniform(0.12, 0.3) * 4 * h
            kind = int(rng.integers(4))
            if kind == 0:
                draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=255)
            elif kind == 1:
                k = int(rng.integers(3, 7))
                ang = np.sort(rng.uniform(0, 2 * np.pi, k))
                draw.polygon([(cx + rx * np.cos(q), cy + ry * np.sin(q)) for q in ang], fill=255)
            elif kind == 2:
                draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), outline=255, width=int(0.35 * min(rx, ry)))
            else:
                draw.rounded_rectangle((cx - rx, cy - ry, cx + rx, cy + ry), radius=0.3 * min(rx, ry), fill=255)
            m = np.asarray(mask.resize((w, h), Image.LANCZOS), np.float32)[None] / 255  # (1, h, w)
            colour = rng.uniform(0, 1, (3, 1, 1))
            light = rng.uniform(0, 2 * np.pi)  # shading: brighter towards a light direction
            shade = 0.75 + 0.25 * np.cos(light) * (xx - 0.5) * 2 + 0.25 * np.sin(light) * (yy - 0.5) * 2
            img = img * (1 - m) + np.clip(colour * shade, 0, 1) * m
        img = img + rng.normal(0, 0.015, img.shape)
        img = img if c == 3 else img.mean(0, keepdims=True)
        out[i] = np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)
    return out


def main() -> None:
    """``python -m detector.data.ood_suite OUT [--shape 3,64,64] [--n 1000]``: each set as OUT/NAME.npz (array x)."""
    import argparse
    from pathlib import Path

    parser = argparse.ArgumentParser(description="Write the far-OOD suite as .npz files (array x, uint8).")
    parser.add_argument("out", type=Path, help="folder to write handwriting.npz, letters.npz, ... into")
    parser.add_argument("--shape", default="1,28,28", help="C,H,W of every sample (default 1,28,28)")
    parser.add_argument("--n", type=int, default=1000, help="samples per set (default 1000)")
    args = parser.parse_args()
    shape = tuple(int(v) for v in args.shape.split(","))
    args.out.mkdir(parents=True, exist_ok=True)
    for name, kind, make in SUITE:
        np.savez(args.out / f"{name}.npz", x=make(args.n, shape))
        print(f"wrote {args.out / name}.npz ({kind})")


if __name__ == "__main__":
    main()

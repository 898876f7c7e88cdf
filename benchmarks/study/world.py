"""The study's synthetic world: scenes, their captions, a camera and image "generators".

Every image starts as a *scene description* (background colour and texture, one or two
objects with shape, colour, size, texture and position), rendered at twice the final
resolution. The description is also the caption, so captions describe content only, as BLIP
captions of real data sets do.

- **Real images** go through a camera: area down-sampling (optical anti-aliasing), sensor
  noise, 8-bit quantisation.
- **Fake images** come from a *generator family*: the same scenes, but each family leaves its
  own synthesis fingerprint (transposed-convolution checkerboards, spectral peaks,
  resampling traces, over-smoothing, colour banding) and the weak, smooth noise of a
  generator instead of the camera's.
- **The semantic shortcut**: each scene has a theme that decides its object colours (warm:
  red/orange/yellow/purple, or cool: green/teal/blue/grey). In the training set the theme is
  correlated with the label (``shortcut`` = P(warm | fake) = P(cool | real)); in every test
  set it is independent of the label.

All randomness comes from the ``seed`` arguments; the same seed gives the same tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

SIZE = 32  # final image size
HI = 2 * SIZE  # render size

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.15, 0.15),
    "orange": (0.95, 0.55, 0.10),
    "yellow": (0.95, 0.88, 0.20),
    "green": (0.20, 0.68, 0.25),
    "teal": (0.10, 0.58, 0.60),
    "blue": (0.15, 0.30, 0.85),
    "purple": (0.55, 0.20, 0.70),
    "grey": (0.50, 0.50, 0.50),
    "white": (0.92, 0.92, 0.92),
    "black": (0.08, 0.08, 0.08),
}
COLOUR_NAMES = tuple(COLOURS)
SHAPES = ("triangle", "cross", "diamond", "circle", "square", "ring")
WARM = ("red", "orange", "yellow", "purple")
COOL = ("green", "teal", "blue", "grey")
SIZES = {"small": 0.22, "large": 0.36}
OBJECT_TEXTURES = ("plain", "striped")
BACKGROUND_TEXTURES = ("plain", "striped", "checked", "dotted", "gradient")
POSITIONS = {
    "on the left": (-0.45, 0.0),
    "on the right": (0.45, 0.0),
    "at the top": (0.0, -0.45),
    "at the bottom": (0.0, 0.45),
    "in the centre": (0.0, 0.0),
}
POSITION_NAMES = tuple(POSITIONS)

#: generator families; the first is the training family of the study's protocol
FAMILIES = ("upconv", "spectral", "resample", "smooth", "banding")


@dataclass(frozen=True)
class Obj:
    shape: str
    colour: str
    size: str
    texture: str
    position: str
    jitter: tuple[float, float]


@dataclass(frozen=True)
class Scene:
    background: str
    bg_texture: str
    objects: tuple[Obj, ...]
    warm: bool  # the theme (the shortcut variable): warm or cool object colours

    def caption(self) -> str:
        """Content-only caption (the stand-in for a BLIP caption)."""
        parts = []
        for o in self.objects:
            tex = "striped " if o.texture == "striped" else ""
            parts.append(f"a {o.size} {o.colour} {tex}{o.shape} {o.position}")
        bg = "plain" if self.bg_texture == "plain" else self.bg_texture
        return f"a photo of {' and '.join(parts)}, on a {bg} {self.background} background"


def sample_scenes(n: int, rng: np.random.Generator, warm: np.ndarray | None = None) -> list[Scene]:
    """``n`` random scenes; ``warm`` fixes each scene's theme (else a fair coin)."""
    if warm is None:
        warm = rng.random(n) < 0.5
    scenes = []
    for i in range(n):
        bg = COLOUR_NAMES[rng.integers(len(COLOUR_NAMES))]
        k = 1 + int(rng.random() < 0.5)
        positions = rng.choice(len(POSITION_NAMES), size=k, replace=False)
        group = WARM if warm[i] else COOL
        objs = []
        for p in positions:
            colour = bg
            while colour == bg:
                colour = group[rng.integers(len(group))]
            objs.append(
                Obj(
                    shape=SHAPES[rng.integers(len(SHAPES))],
                    colour=colour,
                    size=("small", "large")[rng.integers(2)],
                    texture=OBJECT_TEXTURES[int(rng.random() < 0.3)],
                    position=POSITION_NAMES[int(p)],
                    jitter=(float(rng.uniform(-0.08, 0.08)), float(rng.uniform(-0.08, 0.08))),
                )
            )
        scenes.append(
            Scene(
                background=bg,
                bg_texture=BACKGROUND_TEXTURES[rng.integers(len(BACKGROUND_TEXTURES))],
                objects=tuple(objs),
                warm=bool(warm[i]),
            )
        )
    return scenes


# -- rendering --------------------------------------------------------------------------------
_AXIS = (torch.arange(HI, dtype=torch.float32) + 0.5) / HI * 2 - 1
_Y, _X = torch.meshgrid(_AXIS, _AXIS, indexing="ij")
_EDGE = 1.0 / HI  # soft edge width (anti-aliasing before the camera's down-sampling)


def _sdf(shape: str, dx: torch.Tensor, dy: torch.Tensor, r: float) -> torch.Tensor:
    if shape == "circle":
        return torch.sqrt(dx**2 + dy**2) - r
    if shape == "square":
        return torch.maximum(dx.abs(), dy.abs()) - 0.85 * r
    if shape == "ring":
        return (torch.sqrt(dx**2 + dy**2) - 0.8 * r).abs() - 0.22 * r
    if shape == "triangle":
        return torch.maximum(dy - 0.6 * r, dx.abs() * 0.866 - dy * 0.5 - 0.6 * r)
    if shape == "cross":
        a = torch.maximum(dx.abs() - 0.3 * r, dy.abs() - r)
        b = torch.maximum(dx.abs() - r, dy.abs() - 0.3 * r)
        return torch.minimum(a, b)
    if shape == "diamond":
        return dx.abs() + dy.abs() - 1.1 * r
    raise ValueError(f"unknown shape {shape!r}")


def _background(scene: Scene) -> torch.Tensor:
    c = torch.tensor(COLOURS[scene.background]).view(3, 1, 1)
    ix = torch.arange(HI).view(1, HI)
    iy = torch.arange(HI).view(HI, 1)
    t = scene.bg_texture
    if t == "plain":
        shade = torch.ones(HI, HI)
    elif t == "striped":
        shade = 1.0 - 0.35 * (((iy // 6) % 2) == 0).float().expand(HI, HI)
    elif t == "checked":
        shade = 1.0 - 0.35 * ((((iy // 8) + (ix // 8)) % 2) == 0).float()
    elif t == "dotted":
        d = torch.sqrt(((ix % 12) - 5.5) ** 2 + ((iy % 12) - 5.5) ** 2)
        shade = 1.0 - 0.4 * (d < 2.5).float()
    elif t == "gradient":
        shade = 0.6 + 0.4 * (ix.float() / (HI - 1)).expand(HI, HI)
    else:
        raise ValueError(f"unknown background texture {t!r}")
    return (c * shade).clamp(0, 1)


def render(scene: Scene) -> torch.Tensor:
    """The scene at ``HI x HI``, values in [0, 1], shape (3, HI, HI)."""
    img = _background(scene)
    for o in scene.objects:
        cx, cy = POSITIONS[o.position]
        cx, cy = cx + o.jitter[0], cy + o.jitter[1]
        d = _sdf(o.shape, _X - cx, _Y - cy, SIZES[o.size])
        mask = torch.sigmoid(-d / _EDGE)
        colour = torch.tensor(COLOURS[o.colour]).view(3, 1, 1)
        if o.texture == "striped":
            stripes = (((torch.arange(HI).view(1, HI) // 4) % 2) == 0).float()
            colour = colour * (1.0 - 0.4 * stripes)
        img = img * (1 - mask) + colour * mask
    return img


def render_all(scenes: list[Scene]) -> torch.Tensor:
    return torch.stack([render(s) for s in scenes])


# -- camera and generators --------------------------------------------------------------------
def _down(x: torch.Tensor, size: int = SIZE) -> torch.Tensor:
    return F.interpolate(x, size=(size, size), mode="area")


def _quantise(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(0, 1) * 255).round() / 255


def camera(
    hi: torch.Tensor,
    gen: torch.Generator,
    noise: tuple[float, float] = (0.015, 0.05),
) -> torch.Tensor:
    """Real photographs: optical down-sampling, sensor noise, 8 bits."""
    x = _down(hi)
    sigma = torch.empty(len(x), 1, 1, 1).uniform_(*noise, generator=gen)
    x = x + sigma * torch.randn(x.shape, generator=gen)
    return _quantise(x)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    r = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-r, r + 1, dtype=x.dtype)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    c = x.shape[1]
    x = F.conv2d(
        F.pad(x, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c
    )
    x = F.conv2d(
        F.pad(x, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c
    )
    return x


#: fingerprint strengths of the generator families (fixed by the protocol; see docs/study.md)
STRENGTH = {"upconv": 0.02, "spectral": 0.015, "resample": 0.75, "smooth": 0.8, "banding": 10}
#: a generator's own noise (weaker than a camera's): sigma range
GENERATOR_NOISE = (0.0, 0.01)


def generate(hi: torch.Tensor, family: str, gen: torch.Generator) -> torch.Tensor:
    """Fake images of ``family`` for the rendered scenes ``hi`` (N, 3, HI, HI)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown generator family {family!r}; expected one of {FAMILIES}")
    n = len(hi)
    sigma = torch.empty(n, 1, 1, 1).uniform_(*GENERATOR_NOISE, generator=gen)
    s = STRENGTH[family]
    if family == "upconv":
        # a transposed convolution (stride 2) from a half-resolution map whose kernel is not
        # a partition of unity: even and odd output pixels get different gains (checkerboard)
        # (the half-resolution map is extended by one replicated row and column, so the
        # image border is not darker than its inside)
        low = F.pad(_down(hi, SIZE // 2), (0, 1, 0, 1), mode="replicate")
        up = torch.zeros(n, 3, SIZE + 2, SIZE + 2)
        up[:, :, 1::2, 1::2] = low
        k1 = torch.tensor([0.5 - s, 1.0 + s, 0.5 - s])
        k = torch.outer(k1, k1)
        x = F.conv2d(up, k.view(1, 1, 3, 3).expand(3, 1, 3, 3), groups=3)
    elif family == "spectral":
        # periodic peaks in the spectrum (a fixed lattice of frequencies, random phase)
        x = _down(hi)
        ix = torch.arange(SIZE, dtype=torch.float32)
        phase = torch.rand(n, 2, generator=gen) * 2 * math.pi
        wx = torch.cos(2 * math.pi * ix / 4 + phase[:, 0].view(n, 1, 1))
        wy = torch.cos(2 * math.pi * ix / 4 + phase[:, 1].view(n, 1, 1))
        pattern = wx.view(n, 1, SIZE) + wy.view(n, SIZE, 1)
        x = x + s * pattern.unsqueeze(1)
    elif family == "resample":
        # synthesised at a lower resolution and bilinearly resized (interpolation traces)
        low = _down(hi, int(round(SIZE * s)))
        x = F.interpolate(low, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    elif family == "smooth":
        # over-smoothed decoder output
        x = _down(hi)
        x = gaussian_blur(x, s)
    else:  # banding: a coarse colour palette (posterisation)
        x = _down(hi)
        x = (x.clamp(0, 1) * (s - 1)).round() / (s - 1)
    return _quantise(x + sigma * torch.randn(x.shape, generator=gen))


# -- data sets --------------------------------------------------------------------------------
@dataclass
class Split:
    images: torch.Tensor  # (N, 3, SIZE, SIZE) in [0, 1]
    labels: torch.Tensor  # (N,) 0 real, 1 fake
    captions: list[str]
    warm: torch.Tensor  # (N,) the theme (bool)

    def __len__(self) -> int:
        return len(self.labels)


def detection_split(n_real: int, n_fake: int, family: str, shortcut: float, seed: int) -> Split:
    """``n_real`` camera images and ``n_fake`` images of ``family``, shuffled; the theme is
    warm with probability ``shortcut`` for fakes and ``1 - shortcut`` for reals."""
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    warm_real = rng.random(n_real) < 1 - shortcut
    warm_fake = rng.random(n_fake) < shortcut
    real_scenes = sample_scenes(n_real, rng, warm_real)
    fake_scenes = sample_scenes(n_fake, rng, warm_fake)
    real = camera(render_all(real_scenes), gen)
    fake = generate(render_all(fake_scenes), family, gen)
    images = torch.cat([real, fake])
    labels = torch.cat([torch.zeros(n_real), torch.ones(n_fake)]).long()
    scenes = real_scenes + fake_scenes
    perm = torch.randperm(len(labels), generator=gen)
    return Split(
        images=images[perm],
        labels=labels[perm],
        captions=[scenes[i].caption() for i in perm.tolist()],
        warm=torch.tensor([scenes[i].warm for i in perm.tolist()]),
    )


def real_only(n: int, seed: int) -> Split:
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    scenes = sample_scenes(n, rng)
    return Split(
        images=camera(render_all(scenes), gen),
        labels=torch.zeros(n, dtype=torch.long),
        captions=[s.caption() for s in scenes],
        warm=torch.tensor([s.warm for s in scenes]),
    )


# how the pre-training captions name an image's look (as web captions sometimes do): camera
# photographs, grainy photographs, and digital renderings (no camera: no sensor noise)
_LOOKS = {"photo": (0.015, 0.05), "grainy photo": (0.07, 0.1), "digital rendering": (0.0, 0.01)}


def pretraining_set(n: int, seed: int) -> tuple[torch.Tensor, list[str]]:
    """``n`` image-caption pairs for the prior (``n`` even): ``n / 2`` random scenes (no
    generator fingerprints, no labels), each shown in two different looks (a camera
    photograph, a grainy photograph, a digital rendering without the camera's noise) as
    consecutive pairs, captioned from their content and their look. Pairs that differ only in
    their look make the contrastive task attend to it."""
    if n % 2:
        raise ValueError(f"n must be even (pairs of looks), got {n}")
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    scenes = sample_scenes(n // 2, rng)
    hi = render_all(scenes)
    names = list(_LOOKS)
    looks = np.stack([rng.choice(len(names), size=2, replace=False) for _ in scenes]).reshape(-1)
    hi = hi.repeat_interleave(2, dim=0)
    images = torch.empty(n, 3, SIZE, SIZE)
    for k, name in enumerate(names):
        idx = np.nonzero(looks == k)[0]
        if len(idx):
            images[idx] = camera(hi[idx], gen, noise=_LOOKS[name])
    captions = [
        scenes[i // 2].caption().replace("a photo of", f"a {names[looks[i]]} of", 1)
        for i in range(n)
    ]
    return images, captions

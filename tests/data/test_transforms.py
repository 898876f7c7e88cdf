"""dgsnet.data.transforms: spectral entropy, PatchSelection, Degrade, default_transform."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from dgsnet.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Degrade,
    PatchSelection,
    RandomHorizontalFlip,
    default_transform,
    spectral_entropy,
)

P = 32


def numpy_entropy(patch_rgb_uint8: np.ndarray) -> float:
    """Independent re-statement of the definition: luma, FFT2, power, normalise, log2."""
    g = patch_rgb_uint8.astype(np.float64) @ np.array([0.299, 0.587, 0.114]) / 255.0
    power = np.abs(np.fft.fft2(g)) ** 2
    if power.sum() == 0:
        return 0.0
    p = power.flatten() / power.sum()
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def random_image(h=256, w=256, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    # mix of smooth and noisy regions so that entropies spread out
    base = np.linspace(0, 255, w)[None, :, None].repeat(h, 0).repeat(3, 2)
    noise = (
        rng.normal(0, 1, size=(h, w, 3))
        * rng.uniform(0, 60, size=(h // P + 1, w // P + 1, 1)).repeat(P, 0).repeat(P, 1)[:h, :w]
    )
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def tiles_of(mosaic: torch.Tensor, grid: int = 7) -> list[torch.Tensor]:
    return [
        mosaic[:, r * P : (r + 1) * P, c * P : (c + 1) * P]
        for r in range(grid)
        for c in range(grid)
    ]


def patches_of(img: Image.Image) -> list[np.ndarray]:
    a = np.asarray(img)
    h, w = a.shape[0] // P, a.shape[1] // P
    return [a[r * P : (r + 1) * P, c * P : (c + 1) * P] for r in range(h) for c in range(w)]


def as_u8(t: torch.Tensor) -> np.ndarray:
    return (t.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


# ------------------------------------------------------------------------------------------
# spectral entropy


def test_spectral_entropy_closed_forms():
    n = torch.arange(P, dtype=torch.float64)
    cos = (0.5 + 0.5 * torch.cos(2 * torch.pi * 3 * n / P))[None, :].repeat(P, 1)
    # power: DC^2 = (P^2/2)^2, two bins (P^2/4)^2 each -> P = 2/3, 1/6, 1/6
    expected = -(2 / 3 * np.log2(2 / 3) + 2 * (1 / 6) * np.log2(1 / 6))
    assert float(spectral_entropy(cos)) == pytest.approx(expected, abs=1e-9)
    # magnitude: 1/2, 1/4, 1/4 -> 1.5 bits
    assert float(spectral_entropy(cos, "magnitude")) == pytest.approx(1.5, abs=1e-9)
    assert float(spectral_entropy(torch.full((P, P), 0.3))) == 0.0  # flat: all DC
    assert float(spectral_entropy(torch.zeros(P, P))) == 0.0  # black: defined as 0
    # scale invariant, batched over leading dims
    x = torch.rand(2, 3, P, P, generator=torch.Generator().manual_seed(0))
    h = spectral_entropy(x)
    assert h.shape == (2, 3)
    torch.testing.assert_close(spectral_entropy(7.0 * x), h)
    assert bool((h > 0).all()) and bool((h <= np.log2(P * P)).all())


def test_spectral_entropy_matches_numpy_definition():
    rng = np.random.default_rng(1)
    img = random_image(seed=2)
    ps = PatchSelection()
    ours = ps.entropies(img).numpy()
    ref = np.array([numpy_entropy(p) for p in patches_of(img)])
    np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match="spectrum"):
        spectral_entropy(torch.zeros(4, 4), "phase")  # type: ignore[arg-type]
    as_np = spectral_entropy(ps.patches(img)[0][:, 0].numpy())  # numpy in, numpy out
    assert isinstance(as_np, np.ndarray) and as_np.shape == (64,)
    with pytest.raises(TypeError):
        spectral_entropy([[0.0, 1.0]])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shape"):
        spectral_entropy(torch.zeros(4))
    del rng


# ------------------------------------------------------------------------------------------
# PatchSelection


def test_output_shape_and_normalisation():
    img = random_image()
    raw = PatchSelection(deterministic=True, normalize=False)(img)
    assert raw.shape == (3, 224, 224) and raw.dtype == torch.float32
    assert float(raw.min()) >= 0.0 and float(raw.max()) <= 1.0
    norm = PatchSelection(deterministic=True)(img)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    torch.testing.assert_close(norm, (raw - mean) / std)
    # statistics: per-channel mean of the normalised mosaic = (raw mean - mu) / sigma
    torch.testing.assert_close(
        norm.mean((1, 2)), (raw.mean((1, 2)) - mean.flatten()) / std.flatten(), rtol=1e-4, atol=1e-5
    )
    # tiles hold exact input pixel values (uint8 / 255)
    u8 = raw * 255
    torch.testing.assert_close(u8, u8.round(), rtol=0, atol=1e-4)


def test_selects_lowest_and_highest_entropy_patches():
    """24 flat (entropy 0), 15 single-cosine (1.25 bits), 25 noise (~3 bits) patches on an
    8x8 grid at shuffled positions: the mosaic must hold exactly the flat and noise ones."""
    rng = np.random.default_rng(0)
    kinds = np.array(["flat"] * 24 + ["cos"] * 15 + ["noise"] * 25)
    rng.shuffle(kinds)
    img = np.zeros((8 * P, 8 * P, 3), dtype=np.uint8)
    n = np.arange(P)
    for k, kind in enumerate(kinds):
        r, c = divmod(k, 8)
        if kind == "flat":
            tile = np.full((P, P, 3), 20 + 3 * k, dtype=np.uint8)
        elif kind == "cos":
            row = 128 + 100 * np.cos(2 * np.pi * (1 + k % 5) * n / P)
            tile = np.repeat(np.repeat(row[None, :, None], P, 0), 3, 2).astype(np.uint8)
        else:
            tile = rng.integers(0, 256, size=(P, P, 3), dtype=np.uint8)
        img[r * P : (r + 1) * P, c * P : (c + 1) * P] = tile
    pil = Image.fromarray(img)
    ps = PatchSelection(normalize=False, seed=3)
    ent = ps.entropies(pil)
    assert ent.shape == (64,)
    expected = {k for k, kind in enumerate(kinds) if kind in ("flat", "noise")}
    assert set(ps.select(ent).tolist()) == expected
    source = patches_of(pil)
    out = [as_u8(t) for t in tiles_of(ps(pil))]
    got = set()
    for t in out:
        matches = [k for k, s in enumerate(source) if np.array_equal(s, t)]
        assert len(matches) == 1
        got.add(matches[0])
    assert got == expected
    # without shuffling, the kept patches appear in raster order
    ordered = [as_u8(t) for t in tiles_of(PatchSelection(normalize=False, shuffle=False)(pil))]
    assert [
        next(k for k, s in enumerate(source) if np.array_equal(s, t)) for t in ordered
    ] == sorted(expected)


def test_select_order_and_ties():
    ps = PatchSelection(patch_size=4, n_low=2, n_high=2)
    ent = torch.tensor([5.0, 1.0, 1.0, 9.0, 3.0, 9.0])
    # low: the two 1.0 in raster order; high: 9.0 (idx 3) then 9.0 (idx 5)
    assert ps.select(ent).tolist() == [1, 2, 3, 5]
    with pytest.raises(ValueError, match="needed"):
        ps.select(torch.zeros(3))


def test_against_reference_style_numpy_pipeline():
    """The kept set equals a straightforward numpy version of the released algorithm."""
    img = random_image(h=300, w=260, seed=5)  # remainders are dropped
    a = np.asarray(img)
    h, w = a.shape[0] // P, a.shape[1] // P
    ents = []
    for r in range(h):
        for c in range(w):
            ents.append(numpy_entropy(a[r * P : (r + 1) * P, c * P : (c + 1) * P]))
    order = np.argsort(np.array(ents), kind="stable")
    want = sorted(np.concatenate([order[:24], order[-25:]]).tolist())
    ps = PatchSelection(normalize=False, shuffle=False)
    got_tiles = [as_u8(t) for t in tiles_of(ps(img))]
    src = patches_of(img)
    assert [next(k for k, s in enumerate(src) if np.array_equal(s, t)) for t in got_tiles] == want


def test_determinism_modes():
    img = random_image(seed=7)
    d1, d2 = PatchSelection(deterministic=True), PatchSelection(deterministic=True, seed=None)
    first = d1(img)
    assert torch.equal(first, d1(img)) and torch.equal(first, d2(img))
    assert not torch.equal(first, PatchSelection(deterministic=True, seed=1)(img))
    # seeded generator: reproducible sequences, successive calls differ
    s1, s2 = PatchSelection(seed=11), PatchSelection(seed=11)
    a = [s1(img) for _ in range(3)]
    b = [s2(img) for _ in range(3)]
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[0], a[1])
    # global RNG
    torch.manual_seed(5)
    g1 = PatchSelection()(img)
    torch.manual_seed(5)
    assert torch.equal(g1, PatchSelection()(img))
    with pytest.raises(ValueError, match="deterministic"):
        PatchSelection(deterministic=True, flip=True)


def test_worker_seeding_and_pickle(monkeypatch):
    img = random_image(seed=8)
    ps = PatchSelection(seed=4)
    main = ps(img)
    state = pickle.loads(pickle.dumps(ps))  # generators are not pickled
    assert state._generators == {}

    class Info:
        id = 1

    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: Info())
    worker = PatchSelection(seed=4)(img)
    assert not torch.equal(main, worker)  # workers draw different permutations
    assert torch.equal(worker, PatchSelection(seed=4)(img))


def test_flip():
    img = random_image(seed=9)
    base = PatchSelection(shuffle=False)(img)
    ps = PatchSelection(shuffle=False, flip=True, seed=0)
    outs = [ps(img) for _ in range(16)]
    flipped = [torch.equal(o, base.flip(-1)) for o in outs]
    plain = [torch.equal(o, base) for o in outs]
    assert all(f or p for f, p in zip(flipped, plain, strict=True))
    assert any(flipped) and any(plain)


def test_small_images_are_scaled_up():
    small = Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 100, 3), np.uint8))
    out = PatchSelection(deterministic=True)(small)
    assert out.shape == (3, 224, 224)
    tiles, grid = PatchSelection().patches(small)
    assert grid == (7, 11) and tiles.shape == (77, 3, P, P)  # 60x100 -> 224x373
    with pytest.raises(ValueError, match="49 are needed"):
        PatchSelection(upscale=False)(small)
    # a long thin image with enough patches is used as is
    thin = Image.new("RGB", (32 * 60, 32))
    assert PatchSelection().patches(thin)[1] == (1, 60)
    # too small tensor input is scaled up too
    assert PatchSelection(deterministic=True)(torch.rand(3, 40, 40)).shape == (3, 224, 224)


def test_input_types_agree():
    img = random_image(seed=3)
    arr = np.array(img)
    ps = PatchSelection(deterministic=True)
    ref = ps(img)
    assert torch.equal(ps(arr), ref)
    assert torch.equal(ps(torch.from_numpy(arr).permute(2, 0, 1)), ref)  # uint8 CHW
    assert torch.allclose(ps(torch.from_numpy(arr).permute(2, 0, 1).float() / 255), ref, atol=1e-6)
    gray = Image.fromarray(arr[..., 0])  # mode L
    assert ps(gray).shape == (3, 224, 224)
    assert ps(img.convert("RGBA")).shape == (3, 224, 224)
    with pytest.raises(ValueError, match="C in"):
        ps(torch.rand(4, 64, 64))
    with pytest.raises(TypeError):
        ps("image.png")


def test_other_geometries_and_validation():
    ps = PatchSelection(patch_size=16, n_low=9, n_high=16, deterministic=True)
    assert ps.output_size == 80 and ps(random_image()).shape == (3, 80, 80)
    with pytest.raises(ValueError, match="perfect square"):
        PatchSelection(n_low=24, n_high=24)
    with pytest.raises(ValueError):
        PatchSelection(patch_size=0)
    with pytest.raises(ValueError):
        PatchSelection(std=(0.0, 1.0, 1.0))
    assert "PatchSelection(patch_size=32" in repr(PatchSelection())


# ------------------------------------------------------------------------------------------
# Degrade, flips, default_transform


def test_degrade():
    img = random_image(h=64, w=96, seed=4)
    assert Degrade().is_identity and Degrade().name == "clean"
    j = Degrade(jpeg_quality=30)
    out = j(img)
    assert out.size == img.size and out.mode == "RGB"
    assert not np.array_equal(np.asarray(out), np.asarray(img))
    assert np.array_equal(np.asarray(j(img)), np.asarray(out))  # deterministic
    blurred = np.asarray(Degrade(blur_sigma=2.0)(img)).astype(float)
    assert (
        np.abs(np.diff(blurred, axis=1)).mean()
        < np.abs(np.diff(np.asarray(img).astype(float), axis=1)).mean()
    )
    assert Degrade(resize_scale=0.5)(img).size == (48, 32)
    assert Degrade(resize_scale=0.001)(img).size == (1, 1)
    assert Degrade(jpeg_quality=75, blur_sigma=1.0, resize_scale=0.5).name == (
        "resize0.5_blur1_jpeg75"
    )
    for bad in (
        dict(jpeg_quality=0),
        dict(jpeg_quality=101),
        dict(jpeg_quality=50.5),
        dict(blur_sigma=0),
        dict(resize_scale=-1),
        dict(interpolation="area"),
    ):
        with pytest.raises(ValueError):
            Degrade(**bad)
    with pytest.raises(TypeError, match="PIL"):
        Degrade(jpeg_quality=50)(torch.rand(3, 8, 8))
    assert "jpeg_quality=30" in repr(j)


def test_random_horizontal_flip():
    img = random_image(h=8, w=8)
    assert RandomHorizontalFlip(0.0)(img) is img
    flipped = RandomHorizontalFlip(1.0)(img)
    assert np.array_equal(np.asarray(flipped), np.asarray(img)[:, ::-1])
    t = torch.rand(3, 4, 5)
    assert torch.equal(RandomHorizontalFlip(1.0)(t), t.flip(-1))
    with pytest.raises(ValueError):
        RandomHorizontalFlip(2.0)


def test_default_transform_matches_open_clip_preprocess():
    open_clip = pytest.importorskip("open_clip")
    from open_clip.transform import image_transform

    img = random_image(h=300, w=250, seed=6)
    ours = default_transform()(img)
    theirs = image_transform(224, is_train=False)(img)
    assert ours.shape == (3, 224, 224)
    torch.testing.assert_close(ours, theirs)
    del open_clip


def test_default_transform_wraps_given_preprocess():
    seen = []

    def preprocess(im):
        seen.append(im)
        return torch.zeros(1)

    t = default_transform(preprocess, degrade=Degrade(jpeg_quality=50), train=True)
    img = random_image(h=32, w=32)
    t(img)
    assert seen[-1] is not img and seen[-1].size == (32, 32)
    assert default_transform(preprocess) is preprocess
    assert default_transform(preprocess, degrade=Degrade()) is preprocess  # identity skipped
    assert "Degrade" in repr(t)
    ps = PatchSelection(deterministic=True)
    assert default_transform(ps, degrade=Degrade(blur_sigma=1))(random_image()).shape == (
        3,
        224,
        224,
    )
    with pytest.raises(TypeError):
        default_transform("clip")  # type: ignore[arg-type]

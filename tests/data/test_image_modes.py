"""Every pixel format `load_image` can meet maps to 8-bit RGB by the documented rule.

The rule (docs/datasets.md, "Pixel formats"), checked here against numpy arithmetic:

- 16-bit samples (I;16, I;16B, I;16L, I;16N, and 16-bit RGB/RGBA/LA PNGs): ``v >> 8``;
- 32-bit integer (I): read as 16-bit data, ``v >> 8``; values outside 0..65535 are refused;
- float (F): 0..1, clipped (warning naming the file), ``floor(v * 255 + 0.5)``; NaN refused;
- signed integers: negative values refused;
- alpha dropped; 8-bit colour modes converted by PIL.

16-bit PNGs and arbitrary TIFFs are written byte by byte below (PIL cannot write 16-bit RGB,
signed or 8-bit-signed images), so the loader meets exactly the files other software writes.
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dgsnet.data import CorruptImageError
from dgsnet.data._common import ImageRangeWarning, check_image, load_image, to_rgb8

# -- file writers ------------------------------------------------------------------------------


def png_bytes(arr: np.ndarray, bitdepth: int) -> bytes:
    """A minimal PNG (no filter, one IDAT) of a grey (H, W), LA (H, W, 2), RGB or RGBA array."""
    arr = np.asarray(arr)
    h, w = arr.shape[:2]
    channels = 1 if arr.ndim == 2 else arr.shape[2]
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    dtype = ">u2" if bitdepth == 16 else "u1"
    rows = b"".join(b"\x00" + arr[y].astype(dtype).tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", w, h, bitdepth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def tiff_bytes(arr: np.ndarray, *, big_endian: bool = False) -> bytes:
    """A minimal baseline TIFF (one uncompressed strip, interleaved samples) of ``arr``, its
    BitsPerSample and SampleFormat taken from the array's dtype."""
    arr = np.ascontiguousarray(arr)
    h, w = arr.shape[:2]
    spp = 1 if arr.ndim == 2 else arr.shape[2]
    bo = ">" if big_endian else "<"
    bits = arr.dtype.itemsize * 8
    fmt = {"u": 1, "i": 2, "f": 3}[arr.dtype.kind]
    data = arr.astype(arr.dtype.newbyteorder(bo)).tobytes()
    photometric = 1 if spp in (1, 2) else 2
    entries: list[tuple[int, int, list[int]]] = [  # tag, type (3 short, 4 long), values
        (256, 4, [w]),
        (257, 4, [h]),
        (258, 3, [bits] * spp),
        (259, 3, [1]),
        (262, 3, [photometric]),
        (273, 4, [0]),
        (277, 3, [spp]),
        (278, 4, [h]),
        (279, 4, [len(data)]),
        (284, 3, [1]),
        (339, 3, [fmt] * spp),
    ]
    if spp in (2, 4):
        entries.append((338, 3, [2]))  # ExtraSamples: unassociated alpha
    entries.sort()
    after = 8 + 2 + 12 * len(entries) + 4
    blobs = b""
    packed = []
    for tag, typ, values in entries:
        raw = struct.pack(bo + ("H" if typ == 3 else "I") * len(values), *values)
        if len(raw) > 4:
            packed.append([tag, typ, len(values), None, after + len(blobs)])
            blobs += raw
        else:
            packed.append([tag, typ, len(values), raw.ljust(4, b"\0"), None])
    data_offset = after + len(blobs)
    ifd = b""
    for tag, typ, count, inline, offset in packed:
        if tag == 273:
            inline, offset = None, data_offset
        ifd += struct.pack(bo + "HHI", tag, typ, count)
        ifd += inline if inline is not None else struct.pack(bo + "I", offset)
    magic = b"MM\0*" if big_endian else b"II*\0"
    head = magic + struct.pack(bo + "I", 8) + struct.pack(bo + "H", len(packed))
    return head + ifd + b"\0\0\0\0" + blobs + data


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def rgb(path: Path) -> np.ndarray:
    img = load_image(path)
    assert img.mode == "RGB"
    return np.asarray(img)


def grey3(a: np.ndarray) -> np.ndarray:
    return np.repeat(np.asarray(a, dtype=np.uint8)[..., None], 3, axis=-1)


# values that expose clipping (anything >= 256 turns white under PIL's convert("RGB"))
U16 = np.array(
    [[0, 1, 255, 256, 257, 1000], [32767, 32768, 40000, 65279, 65280, 65535]], dtype=np.uint16
)


# -- 16-bit ------------------------------------------------------------------------------------


def test_mid_grey_16bit_png_loads_as_mid_grey(tmp_path):
    path = write(tmp_path / "grey.png", png_bytes(np.full((4, 4), 32768, np.uint16), 16))
    assert (rgb(path) == 128).all()  # it loaded as 255 (white) when convert("RGB") clipped


def test_16bit_gradient_png_keeps_its_mean(tmp_path):
    ramp = np.linspace(0, 65535, 256 * 4).astype(np.uint16).reshape(4, 256)
    out = rgb(write(tmp_path / "ramp.png", png_bytes(ramp, 16)))
    np.testing.assert_array_equal(out, grey3(ramp >> 8))
    assert abs(out.mean() - 127.5) < 0.6  # was 254.4 when clipped


@pytest.mark.parametrize("channels", [2, 3, 4], ids=["LA", "RGB", "RGBA"])
def test_16bit_colour_and_alpha_pngs_keep_the_high_byte(tmp_path, channels):
    rng = np.random.default_rng(channels)
    arr = rng.integers(0, 65536, size=(5, 7, channels)).astype(np.uint16)
    arr[0, :6, 0] = U16[1]  # the boundary values
    out = rgb(write(tmp_path / "c.png", png_bytes(arr, 16)))
    colour = arr[..., :1].repeat(3, -1) if channels == 2 else arr[..., :3]  # alpha dropped
    np.testing.assert_array_equal(out, (colour >> 8).astype(np.uint8))


@pytest.mark.parametrize("big_endian", [False, True], ids=["II", "MM"])
def test_16bit_tiff_both_byte_orders(tmp_path, big_endian):
    out = rgb(write(tmp_path / "g.tif", tiff_bytes(U16, big_endian=big_endian)))
    np.testing.assert_array_equal(out, grey3(U16 >> 8))


def test_16bit_rgb_and_rgba_tiff(tmp_path):
    rng = np.random.default_rng(3)
    for channels in (3, 4):
        arr = rng.integers(0, 65536, size=(4, 6, channels)).astype(np.uint16)
        out = rgb(write(tmp_path / f"c{channels}.tif", tiff_bytes(arr)))
        np.testing.assert_array_equal(out, (arr[..., :3] >> 8).astype(np.uint8))


def test_pillow_written_16bit_files(tmp_path):
    # PIL writes I;16 PNGs and TIFFs, and I;16B TIFFs, itself
    for mode, ext in [("I;16", "png"), ("I;16", "tif"), ("I;16B", "tif")]:
        raw = U16.astype("<u2" if mode == "I;16" else ">u2").tobytes()
        img = Image.frombytes(mode, (6, 2), raw)
        path = tmp_path / f"{mode.replace(';', '_')}.{ext}"
        img.save(path)
        np.testing.assert_array_equal(rgb(path), grey3(U16 >> 8), err_msg=f"{mode} {ext}")


# -- 32-bit integer, signed ------------------------------------------------------------------


def test_int32_tiff_is_read_as_16bit_data(tmp_path):
    arr = U16.astype(np.int32)
    cases = [("s32", arr), ("u32", arr.astype(np.uint32)), ("s16", (arr // 2).astype(np.int16))]
    for name, a in cases:
        out = rgb(write(tmp_path / f"{name}.tif", tiff_bytes(a)))
        np.testing.assert_array_equal(out, grey3(a.astype(np.int64) >> 8), err_msg=name)
    # PIL's own I-mode TIFF
    Image.fromarray(arr).save(tmp_path / "pil_i.tif")
    np.testing.assert_array_equal(rgb(tmp_path / "pil_i.tif"), grey3(arr >> 8))


@pytest.mark.parametrize(
    "arr, what",
    [
        (np.array([[0, 70000]], np.int32), "0..70000"),
        (np.array([[0, 2**31 + 5]], np.uint32), "-2147483643..0"),  # PIL wraps it negative
        (np.array([[-1, 5]], np.int16), "-1..5"),
        (np.array([[-3, 5]], np.int8), "negative"),
    ],
    ids=["int32-above-16bit", "uint32-above-2^31", "int16-negative", "int8-negative"],
)
def test_integer_pixels_outside_the_rule_are_refused(tmp_path, arr, what):
    path = write(tmp_path / "bad.tif", tiff_bytes(arr))
    with pytest.raises(CorruptImageError, match=what) as info:
        load_image(path)
    assert info.value.path == str(path)
    assert check_image(path) == info.value.reason


def test_signed_8bit_tiff_non_negative_values(tmp_path):
    arr = np.array([[0, 1, 64, 127]], np.int8)
    out = rgb(write(tmp_path / "s8.tif", tiff_bytes(arr)))
    np.testing.assert_array_equal(out, grey3(arr))


# -- float -------------------------------------------------------------------------------------


def test_float_tiff_half_is_mid_grey(tmp_path):
    a = np.array([[0.0, 0.5, 1.0, 0.25, 1 / 255, 0.5 / 255]], np.float32)
    out = rgb(write(tmp_path / "f.tif", tiff_bytes(a)))
    expect = np.floor(a.astype(np.float64) * 255 + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(out, grey3(expect))
    assert out[0, 1, 0] == 128  # was 0 (black): PIL's convert reads F as 0..255


def test_float_out_of_range_is_clipped_with_a_warning_naming_the_file(tmp_path):
    a = np.array([[-0.5, 0.5, 2.0]], np.float32)
    path = write(tmp_path / "over.tif", tiff_bytes(a))
    with pytest.warns(ImageRangeWarning, match=r"over\.tif.*-0\.5\.\.2.*clipped"):
        out = rgb(path)
    np.testing.assert_array_equal(out, grey3([[0, 128, 255]]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # in range: no warning
        rgb(write(tmp_path / "ok.tif", tiff_bytes(np.array([[0.0, 1.0]], np.float32))))


def test_nan_float_pixels_are_refused(tmp_path):
    path = write(tmp_path / "nan.tif", tiff_bytes(np.array([[0.1, np.nan]], np.float32)))
    with pytest.raises(CorruptImageError, match=r"nan\.tif.*1 NaN/Inf"):
        load_image(path)
    assert check_image(path) is not None


def test_formats_pillow_cannot_decode_are_refused_naming_the_file(tmp_path):
    for name, a in [
        ("f64", np.array([[0.5]], np.float64)),
        ("rgbf", np.full((1, 2, 3), 0.5, np.float32)),
        ("u16la", np.full((1, 2, 2), 7, np.uint16)),
    ]:
        path = write(tmp_path / f"{name}.tif", tiff_bytes(a))
        with pytest.raises(CorruptImageError, match=str(path).replace(".", r"\.")):
            load_image(path)
        assert check_image(path) is not None


# -- every PIL mode ----------------------------------------------------------------------------


def _random_image(mode: str, rng: np.random.Generator) -> tuple[Image.Image, np.ndarray]:
    """An image of ``mode`` and the RGB array the rule gives for it, in numpy arithmetic."""
    h, w = 3, 5
    if mode in ("I;16", "I;16L", "I;16N", "I;16B"):
        a = rng.integers(0, 65536, size=(h, w)).astype(np.uint16)
        a[0, :2] = (256, 32768)
        raw = a.astype(">u2" if mode == "I;16B" else "<u2").tobytes()
        return Image.frombytes(mode, (w, h), raw), grey3(a >> 8)
    if mode == "I":
        a = rng.integers(0, 65536, size=(h, w)).astype(np.int32)
        return Image.fromarray(a, "I"), grey3(a >> 8)
    if mode == "F":
        a = rng.random((h, w)).astype(np.float32)
        a[0, :3] = (0.0, 0.5, 1.0)
        return Image.fromarray(a, "F"), grey3(np.floor(a.astype(np.float64) * 255 + 0.5))
    if mode == "1":
        a = rng.integers(0, 2, size=(h, w)).astype(np.uint8) * 255
        return Image.fromarray(a, "L").convert("1", dither=Image.Dither.NONE), grey3(a)
    if mode == "L":
        a = rng.integers(0, 256, size=(h, w)).astype(np.uint8)
        return Image.fromarray(a, "L"), grey3(a)
    if mode == "LA":
        a = rng.integers(0, 256, size=(h, w, 2)).astype(np.uint8)
        return Image.fromarray(a, "LA"), grey3(a[..., 0])
    if mode in ("RGB", "RGBA", "RGBX"):
        a = rng.integers(0, 256, size=(h, w, len(mode))).astype(np.uint8)
        return Image.frombytes(mode, (w, h), a.tobytes()), a[..., :3]
    if mode in ("P", "PA"):
        palette = rng.integers(0, 256, size=(256, 3)).astype(np.uint8)
        idx = rng.integers(0, 256, size=(h, w)).astype(np.uint8)
        im = Image.fromarray(idx, "L").convert("P")
        im.putpalette(palette.tobytes())
        if mode == "PA":
            im = im.convert("PA")
        return im, palette[idx]
    if mode == "La":  # premultiplied: with alpha 255 the grey is the grey
        a = rng.integers(0, 256, size=(h, w)).astype(np.uint8)
        raw = np.stack([a, np.full_like(a, 255)], -1).tobytes()
        return Image.frombytes("La", (w, h), raw), grey3(a)
    if mode == "RGBa":
        a = rng.integers(0, 256, size=(h, w, 3)).astype(np.uint8)
        raw = np.concatenate([a, np.full((h, w, 1), 255, np.uint8)], -1).tobytes()
        return Image.frombytes("RGBa", (w, h), raw), a
    if mode == "CMYK":  # PIL's conversion, no colour profile: (255 - k) * (1 - c / 255), rounded
        a = rng.integers(0, 256, size=(h, w, 4)).astype(np.int64)
        nk = 255 - a[..., 3:]
        t = a[..., :3] * nk + 128
        expect = nk - (((t >> 8) + t) >> 8)
        return Image.frombytes("CMYK", (w, h), a.astype(np.uint8).tobytes()), expect
    if mode == "YCbCr":  # pure colours only: the JPEG (BT.601 full-range) inverse, +-1
        ycc = np.array([[[76, 85, 255], [150, 44, 21], [29, 255, 107], [255, 128, 128]]], np.uint8)
        expect = np.array([[[254, 0, 0], [0, 255, 1], [0, 0, 254], [255, 255, 255]]], np.uint8)
        return Image.frombytes("YCbCr", (4, 1), ycc.tobytes()), expect
    if mode == "HSV":
        import colorsys

        a = rng.integers(0, 256, size=(h, w, 3)).astype(np.uint8)
        expect = np.array(
            [[[round(c * 255) for c in colorsys.hsv_to_rgb(*(p / 255.0))] for p in r] for r in a]
        )
        return Image.frombytes("HSV", (w, h), a.tobytes()), expect
    if mode == "LAB":  # white and black anchors (PIL converts through sRGB; raw a, b signed)
        lab = np.array([[[255, 0, 0], [0, 0, 0]]], np.uint8)
        return Image.frombytes("LAB", (2, 1), lab.tobytes()), np.array([[[255] * 3, [0] * 3]])
    raise AssertionError(f"no test case for PIL mode {mode!r}: add one (and a rule if needed)")


@pytest.mark.parametrize("mode", sorted(Image.MODES))
def test_every_pillow_mode_maps_by_the_rule(mode):
    im, expect = _random_image(mode, np.random.default_rng(abs(hash(mode)) % 1000))
    assert im.mode == mode
    out = to_rgb8(im, f"x.{mode}")
    assert out.mode == "RGB" and out.size == im.size
    got = np.asarray(out).astype(np.int64)
    # exact for all but the colour-space conversions, which PIL rounds its own way
    tol = 1 if mode in ("YCbCr", "HSV", "LAB", "RGBa", "La") else 0
    dev = int(np.abs(got - np.asarray(expect, np.int64)).max())
    assert dev <= tol, f"{mode}: max deviation {dev} from the rule\n{got}\n{np.asarray(expect)}"


def test_palette_with_transparency_drops_alpha(tmp_path):
    im = Image.new("P", (2, 1))
    im.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    im.putpixel((1, 0), 1)
    im.info["transparency"] = 0
    im.save(tmp_path / "t.png", transparency=0)
    np.testing.assert_array_equal(rgb(tmp_path / "t.png"), [[[10, 20, 30], [200, 100, 50]]])


# -- check_image agrees, bombs name their file -------------------------------------------------


def test_check_image_agrees_with_load_image(tmp_path):
    files = {
        "u16.png": png_bytes(U16, 16),
        "f.tif": tiff_bytes(np.array([[0.5]], np.float32)),
        "nan.tif": tiff_bytes(np.array([[np.nan]], np.float32)),
        "big.tif": tiff_bytes(np.array([[70000]], np.int32)),
        "neg.tif": tiff_bytes(np.array([[-1]], np.int16)),
        "junk.png": b"not an image",
    }
    for name, data in files.items():
        path = write(tmp_path / name, data)
        try:
            load_image(path)
            loaded = True
        except CorruptImageError:
            loaded = False
        assert (check_image(path) is None) == loaded, name


def test_decompression_bomb_warning_names_the_file(tmp_path, monkeypatch):
    path = tmp_path / "huge.png"
    Image.new("RGB", (40, 30)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 1200 pixels: warns, below 2x
    with pytest.warns(Image.DecompressionBombWarning, match=r"huge\.png.*1200 pixels"):
        load_image(path)
    with pytest.warns(Image.DecompressionBombWarning, match=r"huge\.png"):
        assert check_image(path) is None
    with warnings.catch_warnings():  # an "error" filter still makes it an error, file named
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with pytest.raises(CorruptImageError, match=r"huge\.png.*DecompressionBomb"):
            load_image(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # above 2x: PIL's error, file named
    with pytest.raises(CorruptImageError, match=r"huge\.png.*DecompressionBombError"):
        load_image(path)


def test_decoded_buffer_is_independent_of_the_file(tmp_path):
    # the loader closes the file: the image must not depend on it afterwards
    path = write(tmp_path / "a.png", png_bytes(U16, 16))
    img = load_image(path)
    path.unlink()
    np.testing.assert_array_equal(np.asarray(img), grey3(U16 >> 8))


def test_png_writer_round_trips_8bit():
    arr = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png_bytes(arr, 8)))), arr)

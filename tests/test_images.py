"""run_vlm.load_image: images as users have them come back as the RGB the models expect.

Each case writes a small image with Pillow to tmp_path, checks that the file opens in the mode
under test (so that the case tests what it says), and asserts exact pixels from load_image:
wide samples scaled (not clipped), EXIF orientation applied, transparency over white, CMYK,
YCbCr and bilevel converted, and the first frame of animated and multi-page files.
"""

import numpy as np
import pytest
from PIL import Image

import run_vlm

RED, GREEN, BLUE, WHITE, BLACK, GRAY = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255,) * 3, (0,) * 3, (128,) * 3


def row(image):
    """The pixels of a one-row image."""
    return [image.getpixel((x, 0)) for x in range(image.width)]


def saved(image, path, mode, **params):
    """Save the image, check that it opens in ``mode``, and return load_image's RGB image."""
    image.save(path, **params)
    with Image.open(path) as opened:
        assert opened.mode == mode, f"{path.name} opens as {opened.mode}, not {mode}: the case no longer tests {mode}"
    loaded = run_vlm.load_image(path)
    assert loaded.mode == "RGB"
    return loaded


def gray(values):
    return [(v, v, v) for v in values]


# --- samples wider than 8 bits: scaled to 0..255 with rounding, not clipped to white ------------

SIXTEEN = [0, 128, 257, 1000, 32767, 32768, 65535]
SIXTEEN_RGB = gray([0, 0, 1, 4, 127, 128, 255])  # round(v * 255 / 65535)


@pytest.mark.parametrize("name, mode, dtype", [
    ("gray16.png", "I;16", "<u2"),
    ("gray16.tif", "I;16", "<u2"),
    ("gray16_big_endian.tif", "I;16B", ">u2"),
    ("gray16.pgm", "I", "<u2"),  # Pillow reads PGM of maxval > 255 as "I", scaled to 0..65535
])
def test_16_bit_gray(tmp_path, name, mode, dtype):
    array = np.array([SIXTEEN], dtype=dtype)
    image = Image.frombytes("I;16B" if dtype == ">u2" else "I;16", (len(SIXTEEN), 1), array.tobytes())
    assert row(saved(image, tmp_path / name, mode)) == SIXTEEN_RGB


def test_pgm_maxval_1023(tmp_path):
    """A 10-bit PGM: Pillow scales its 0..1023 to 0..65535 ("I"), then 0..255 here."""
    path = tmp_path / "gray10.pgm"
    path.write_bytes(b"P5 4 1 1023\n" + np.array([0, 4, 512, 1023], dtype=">u2").tobytes())
    with Image.open(path) as opened:
        assert opened.mode == "I"
    assert row(run_vlm.load_image(path)) == gray([0, 1, 128, 255])


def test_32_bit_integer(tmp_path):
    """32-bit integer TIFF ("I"): the 16-bit scale; negative and above-65535 values saturate."""
    image = Image.fromarray(np.array([[-5, 0, 1000, 32768, 65535, 70000, 2**31 - 1]], dtype=np.int32))
    assert row(saved(image, tmp_path / "int32.tif", "I")) == gray([0, 0, 4, 128, 255, 255, 255])


def test_float(tmp_path):
    """Float TIFF ("F"): 0.0..1.0 -> 0..255, rounded; outside that range saturates."""
    image = Image.fromarray(np.array([[-0.5, 0.0, 0.001, 0.5, 0.999, 1.0, 2.0]], dtype=np.float32))
    assert row(saved(image, tmp_path / "float.tif", "F")) == gray([0, 0, 0, 128, 255, 255, 255])


@pytest.mark.parametrize("name", ["gray.png", "gray.tif", "gray.pgm"])
def test_8_bit_gray(tmp_path, name):
    image = Image.frombytes("L", (4, 1), bytes([0, 1, 128, 255]))
    assert row(saved(image, tmp_path / name, "L")) == gray([0, 1, 128, 255])


@pytest.mark.parametrize("name", ["bilevel.png", "bilevel.tif", "bilevel.pbm"])
def test_bilevel(tmp_path, name):
    image = Image.new("1", (4, 1), 0)
    image.putpixel((1, 0), 1)
    image.putpixel((3, 0), 1)
    assert row(saved(image, tmp_path / name, "1")) == [BLACK, WHITE, BLACK, WHITE]


# --- EXIF orientation ---------------------------------------------------------------------------

# Where the stored top-left (red) and top-right (blue) corners of a 3x2 image show, in (x, y)
# cells of the upright image, and its upright size in cells, for each EXIF orientation.
ORIENTATIONS = {
    1: ((0, 0), (2, 0), (3, 2)),  # as stored
    2: ((2, 0), (0, 0), (3, 2)),  # mirrored left-right
    3: ((2, 1), (0, 1), (3, 2)),  # rotated 180
    4: ((0, 1), (2, 1), (3, 2)),  # mirrored top-bottom
    5: ((0, 0), (0, 2), (2, 3)),  # transposed
    6: ((1, 0), (1, 2), (2, 3)),  # rotated 90 clockwise to view (a phone held upright)
    7: ((1, 2), (1, 0), (2, 3)),  # transversed
    8: ((0, 2), (0, 0), (2, 3)),  # rotated 90 counter-clockwise to view
}


@pytest.mark.parametrize("ext", ["png", "jpg", "webp"])
@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
def test_exif_orientation(tmp_path, orientation, ext):
    cell = 16  # JPEG blocks: each cell one flat colour, so lossy formats keep it nearly exact
    stored = Image.new("RGB", (3 * cell, 2 * cell), GRAY)
    stored.paste(RED, (0, 0, cell, cell))
    stored.paste(BLUE, (2 * cell, 0, 3 * cell, cell))
    exif = Image.Exif()
    exif[0x0112] = orientation  # Orientation
    params = {"quality": 95} if ext == "jpg" else {"lossless": True} if ext == "webp" else {}
    image = saved(stored, tmp_path / f"oriented.{ext}", "RGB", exif=exif.tobytes(), **params)

    red_at, blue_at, (columns, rows) = ORIENTATIONS[orientation]
    assert image.size == (columns * cell, rows * cell)
    tolerance = 8 if ext == "jpg" else 0
    for x in range(columns):
        for y in range(rows):
            expected = RED if (x, y) == red_at else BLUE if (x, y) == blue_at else GRAY
            got = image.getpixel((x * cell + cell // 2, y * cell + cell // 2))
            assert max(abs(g - e) for g, e in zip(got, expected)) <= tolerance, (x, y, got, expected)


def test_no_exif(tmp_path):
    image = Image.new("RGB", (3, 2), GRAY)
    image.putpixel((0, 0), RED)
    loaded = saved(image, tmp_path / "plain.png", "RGB")
    assert loaded.size == (3, 2) and loaded.getpixel((0, 0)) == RED


def test_exif_orientation_with_transparency(tmp_path):
    """Orientation and transparency together: a palette image rotated, its transparent pixel white."""
    image = Image.new("P", (2, 1), 0)
    image.putpalette([*RED, *BLUE])
    image.putpixel((1, 0), 1)
    exif = Image.Exif()
    exif[0x0112] = 6
    loaded = saved(image, tmp_path / "oriented.png", "P", exif=exif.tobytes(), transparency=0)
    assert loaded.size == (1, 2)
    assert [loaded.getpixel((0, y)) for y in range(2)] == [WHITE, BLUE]


# --- transparency: composited over white --------------------------------------------------------

@pytest.mark.parametrize("name", ["rgba.png", "rgba.tif", "rgba.webp"])
def test_rgba(tmp_path, name):
    pixels = [(255, 0, 0, 0), (0, 0, 0, 0), (255, 0, 0, 255), (255, 0, 0, 128), (0, 0, 255, 64), (10, 20, 30, 255)]
    image = Image.new("RGBA", (len(pixels), 1))
    image.putdata(pixels)
    params = {"lossless": True, "exact": True} if name.endswith("webp") else {}
    # transparent -> white (whatever colour it holds), opaque as is, partial: c * a + 255 * (1 - a)
    assert row(saved(image, tmp_path / name, "RGBA", **params)) == [
        WHITE, WHITE, RED, (255, 127, 127), (191, 191, 255), (10, 20, 30)]


@pytest.mark.parametrize("name", ["la.png", "la.tif"])
def test_gray_alpha(tmp_path, name):
    image = Image.new("LA", (4, 1))
    image.putdata([(0, 0), (0, 255), (100, 255), (0, 128)])
    assert row(saved(image, tmp_path / name, "LA")) == gray([255, 0, 100, 127])


@pytest.mark.parametrize("name", ["palette.png", "palette.gif", "palette.tif", "palette.bmp"])
def test_palette_opaque(tmp_path, name):
    image = Image.new("P", (3, 1))
    image.putpalette([*RED, *GREEN, 10, 20, 30])
    image.putdata([0, 1, 2])
    assert row(saved(image, tmp_path / name, "P")) == [RED, GREEN, (10, 20, 30)]


@pytest.mark.parametrize("name", ["palette.png", "palette.gif"])
def test_palette_transparent_index(tmp_path, name):
    image = Image.new("P", (3, 1))
    image.putpalette([0, 0, 0, *GREEN, *BLUE])  # index 0, black, is the transparent one
    image.putdata([0, 1, 2])
    assert row(saved(image, tmp_path / name, "P", transparency=0)) == [WHITE, GREEN, BLUE]


def test_palette_alpha_per_entry(tmp_path):
    """A PNG palette with an alpha per entry (tRNS): each entry composited over white."""
    image = Image.new("P", (3, 1))
    image.putpalette([*RED, *BLUE, *GREEN])
    image.putdata([0, 1, 2])
    loaded = saved(image, tmp_path / "palette_alpha.png", "P", transparency=bytes([0, 128, 255]))
    assert row(loaded) == [WHITE, (127, 127, 255), GREEN]


@pytest.mark.parametrize("mode, key, other", [("L", 7, 200), ("RGB", (1, 2, 3), (200, 100, 50))])
def test_transparent_colour_key(tmp_path, mode, key, other):
    """A PNG's single transparent colour (tRNS on a gray or RGB image)."""
    image = Image.new(mode, (2, 1), key)
    image.putpixel((1, 0), other)
    loaded = saved(image, tmp_path / "key.png", mode, transparency=key)
    assert row(loaded) == [WHITE, gray([other])[0] if mode == "L" else other]


# --- other colour spaces ------------------------------------------------------------------------

@pytest.mark.parametrize("cmyk, rgb", [
    ((255, 0, 0, 0), (0, 255, 255)),  # cyan
    ((0, 255, 0, 0), (255, 0, 255)),  # magenta
    ((0, 0, 255, 0), (255, 255, 0)),  # yellow
    ((0, 255, 255, 0), RED),
    ((0, 0, 0, 0), WHITE),
    ((0, 0, 0, 255), BLACK),
    ((0, 0, 0, 128), (127, 127, 127)),
])
def test_cmyk(tmp_path, cmyk, rgb):
    """CMYK TIFF (lossless), Pillow's plain conversion (no ICC profile)."""
    image = Image.new("CMYK", (2, 1), cmyk)
    assert row(saved(image, tmp_path / "cmyk.tif", "CMYK")) == [rgb, rgb]


@pytest.mark.parametrize("ycbcr, rgb", [((255, 128, 128), WHITE), ((0, 128, 128), BLACK), ((76, 85, 255), (254, 0, 0))])
def test_ycbcr(tmp_path, ycbcr, rgb):
    """A YCbCr TIFF: libtiff hands it to Pillow as RGB."""
    image = Image.new("YCbCr", (8, 8), ycbcr)
    assert saved(image, tmp_path / "ycbcr.tif", "RGB", compression="tiff_lzw").getpixel((3, 3)) == rgb


# --- several frames: the first one, with one note ----------------------------------------------

@pytest.mark.parametrize("name, params", [
    ("animated.gif", {"duration": 100, "loop": 0}),
    ("animated.webp", {"duration": 100, "lossless": True}),
    ("animated.png", {"duration": 100}),  # APNG
    ("pages.tif", {}),
])
def test_first_frame(tmp_path, capsys, name, params):
    frames = [Image.new("RGB", (4, 4), colour) for colour in (RED, GREEN, BLUE)]
    path = tmp_path / name
    frames[0].save(path, save_all=True, append_images=frames[1:], **params)
    with Image.open(path) as opened:
        assert opened.n_frames == 3
    image = run_vlm.load_image(path)
    assert image.mode == "RGB" and image.size == (4, 4)
    assert image.getcolors() == [(16, RED)]
    notes = capsys.readouterr().err.splitlines()
    assert notes == [f"[tllm] --image_path {path}: 3 frames; only the first is used"]


def test_one_frame_no_note(tmp_path, capsys):
    path = tmp_path / "still.gif"
    Image.new("RGB", (4, 4), RED).save(path)
    assert run_vlm.load_image(path).getpixel((0, 0)) == RED
    assert capsys.readouterr().err == ""

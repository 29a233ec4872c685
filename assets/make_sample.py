"""Draws assets/sample.png, the image run_vlm.py uses when --image_path is not given.

A simple scene a vision-language model can describe (a house, a tree, a sun and a red ball on
grass under a blue sky), drawn with Pillow so the project ships its own picture. It is 448x336
pixels: both sides are multiples of 112 px, so Qwen2.5-VL's vision windows are uniform and its
encoder can be compiled for it as is (see qwen_vl.py), and Eagle2 tiles it into a 4x3 grid.

    python assets/make_sample.py      # rewrites assets/sample.png
"""

from pathlib import Path

from PIL import Image, ImageDraw

WIDTH, HEIGHT = 448, 336
HORIZON = 220


def draw():
    image = Image.new("RGB", (WIDTH, HEIGHT))
    d = ImageDraw.Draw(image)
    # Sky: a vertical gradient in steps of 4 rows (flat bands keep the PNG small).
    for y in range(0, HORIZON, 4):
        t = y / HORIZON
        d.rectangle([0, y, WIDTH, y + 3], fill=(int(70 + 110 * t), int(140 + 80 * t), 235))
    d.rectangle([0, HORIZON, WIDTH, HEIGHT], fill=(76, 160, 60))  # grass
    d.ellipse([360, 28, 420, 88], fill=(255, 214, 40))  # sun
    # House: walls, roof, door, window.
    d.rectangle([60, 140, 200, 250], fill=(200, 120, 70), outline=(90, 50, 30), width=3)
    d.polygon([(45, 142), (130, 75), (215, 142)], fill=(150, 40, 40), outline=(90, 30, 30))
    d.rectangle([112, 190, 148, 250], fill=(100, 60, 30))
    d.rectangle([160, 160, 188, 186], fill=(180, 220, 255), outline=(90, 50, 30), width=2)
    # Tree: trunk and crown.
    d.rectangle([268, 160, 286, 250], fill=(110, 70, 35))
    d.ellipse([232, 90, 322, 180], fill=(40, 120, 45))
    d.ellipse([300, 262, 350, 312], fill=(220, 30, 30), outline=(140, 10, 10), width=2)  # ball
    return image


if __name__ == "__main__":
    path = Path(__file__).resolve().parent / "sample.png"
    draw().save(path, optimize=True)
    print(f"wrote {path} ({path.stat().st_size} bytes)")

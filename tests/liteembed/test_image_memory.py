"""Decoding in bounded memory: a small file that declares a huge image is reduced to what the
model needs without a full-size RGB (or float) copy, and JPEG never decodes at full size."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from liteembed.images import MAX_ASPECT, decode_image

REPO = Path(__file__).resolve().parents[2]
SIDE = 6000

# Runs in a fresh interpreter: its peak RSS over its own baseline is the decode's cost alone.
# Four decodes on two threads, as the preprocessing pool runs them: large decodes take turns.
_MEASURE = """
import json, resource, sys
from concurrent.futures import ThreadPoolExecutor
from liteembed.images import decode_image
data = open(sys.argv[1], "rb").read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with ThreadPoolExecutor(2) as pool:
    images = list(pool.map(
        lambda _: decode_image(data, max_pixels=40_000_000, min_side=448), range(4)
    ))
image = images[0]
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"grew_mb": (after - before) / 1024, "size": image.size}))
"""


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _peak_growth(tmp_path: Path, data: bytes) -> dict[str, object]:
    path = tmp_path / "huge.png"
    path.write_bytes(data)
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(path)],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
    )
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("mode", "fill", "native_mb"),
    [("I;16", 40000, 72), ("RGBA", (10, 200, 30, 128), 144)],
    ids=["16-bit grey", "RGBA"],
)
def test_huge_small_png_decodes_within_its_own_size(
    tmp_path: Path, mode: str, fill: object, native_mb: int
) -> None:
    data = _png(Image.new(mode, (SIDE, SIDE), fill))  # type: ignore[arg-type]
    assert len(data) < 500_000  # a small file...
    measured = _peak_growth(tmp_path, data)
    # ...that is reduced as it is decoded: short side >= 448, by an integer factor (13 here).
    assert measured["size"] == [462, 462]
    # Pillow's own full-size decode is unavoidable for PNG; nothing as large comes on top of it
    # (converting the whole image first cost 4-12x that: float64 arrays, RGBA composites).
    assert measured["grew_mb"] < native_mb + 40, measured


def test_large_jpeg_decodes_at_a_reduced_scale() -> None:
    pixels = np.linspace(0, 255, 4000 * 4000 * 3).reshape(4000, 4000, 3).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=70)
    seen: list[int] = []
    image = decode_image(buffer.getvalue(), min_side=448, reserve=seen.append)
    assert seen == [500 * 500]  # 1/8 scale: what is decoded, not the declared 16M pixels
    assert min(image.size) >= 448 or image.size == (500, 500)


def test_reserve_can_refuse_before_decoding() -> None:
    class Refused(Exception):
        pass

    def refuse(pixels: int) -> None:
        raise Refused(pixels)

    with pytest.raises(Refused):
        decode_image(_png(Image.new("RGB", (300, 200))), min_side=64, reserve=refuse)


@pytest.mark.parametrize("mode", ["RGBA", "I;16", "P", "L", "F"])
def test_strip_reduction_equals_whole_image_conversion(mode: str) -> None:
    rng = np.random.default_rng(0)
    if mode == "I;16":
        source = Image.fromarray(rng.integers(0, 65535, (1500, 900), dtype=np.uint16))
    elif mode == "F":
        source = Image.fromarray(rng.random((1500, 900), dtype=np.float32))
    else:
        rgba = rng.integers(0, 255, (1500, 900, 4), dtype=np.uint8)
        source = Image.fromarray(rgba, "RGBA").convert(mode)
    fmt = "TIFF" if mode == "F" else "PNG"
    buffer = io.BytesIO()
    source.save(buffer, format=fmt)
    reduced = decode_image(buffer.getvalue(), min_side=100)
    expected = decode_image(buffer.getvalue()).reduce(9)  # whole image, then 900 // 100
    assert reduced.size == expected.size
    assert np.array_equal(np.asarray(reduced), np.asarray(expected))


def test_panorama_keeps_its_central_part() -> None:
    wide = Image.new("RGB", (9000, 500), (200, 10, 10))
    reduced = decode_image(_png(wide), min_side=100)
    assert reduced.size == (MAX_ASPECT * 500 // 5, 100)

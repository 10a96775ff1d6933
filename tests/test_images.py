import hashlib
import io
import os
import struct
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data

from vlm4rec.images import ImageLoadError, image_sha256, load_image


def encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def bomb_png(width: int, height: int) -> bytes:
    """A 1-bit greyscale PNG header declaring width x height pixels with a tiny (invalid) body."""
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(b"\0" * 16))
            + png_chunk(b"IEND", b""))


def pixels(source) -> np.ndarray:
    return np.asarray(load_image(source))


def test_jpeg_from_path_and_bytes_is_rgb(tmp_path):
    jpeg = encoded(Image.fromarray(data.chelsea()), "JPEG", quality=95)
    path = tmp_path / "cat.jpg"
    path.write_bytes(jpeg)
    from_path, from_bytes = load_image(path), load_image(jpeg)
    assert from_path.mode == "RGB" and from_path.size == (451, 300)
    assert np.array_equal(np.asarray(from_path), np.asarray(from_bytes))
    # JPEG at quality 95 stays close to the original photo.
    assert np.abs(np.asarray(from_path).astype(int) - data.chelsea().astype(int)).mean() < 3
    assert load_image(str(path)).size == (451, 300)


@pytest.mark.parametrize("make_source, kind", [
    (lambda tmp: tmp / "absent.jpg", "missing_file"),
    (lambda tmp: b"", "empty"),
    (lambda tmp: b"this is plain text, not an image at all", "not_an_image"),
    (lambda tmp: encoded(Image.fromarray(data.chelsea()), "JPEG")[:3000], "truncated"),
    (lambda tmp: bomb_png(100_000, 100_000), "decompression_bomb"),
])
def test_broken_images_raise_with_their_kind(tmp_path, make_source, kind):
    with pytest.raises(ImageLoadError) as info:
        load_image(make_source(tmp_path))
    assert info.value.kind == kind and info.value.reason


def test_zero_byte_file_is_empty(tmp_path):
    path = tmp_path / "zero.jpg"
    path.write_bytes(b"")
    with pytest.raises(ImageLoadError, match="empty: zero bytes"):
        load_image(path)


def test_pixel_cap_is_checked_from_the_header():
    small = encoded(Image.new("RGB", (100, 100)), "PNG")
    assert load_image(small, max_pixels=10_000).size == (100, 100)
    with pytest.raises(ImageLoadError, match="100x100 = 10,000 pixels > limit 9,999"):
        load_image(small, max_pixels=9_999)


def test_alpha_is_composited_on_white():
    rgba = Image.new("RGBA", (3, 1))
    rgba.putpixel((0, 0), (200, 0, 0, 255))    # opaque: kept
    rgba.putpixel((1, 0), (200, 0, 0, 0))      # transparent: white
    rgba.putpixel((2, 0), (0, 0, 100, 128))    # half: 128/255 colour + 127/255 white
    out = pixels(encoded(rgba, "PNG"))
    assert out[0, 0].tolist() == [200, 0, 0]
    assert out[0, 1].tolist() == [255, 255, 255]
    expected = [round((0 * 128 + 255 * 127) / 255), round((0 * 128 + 255 * 127) / 255),
                round((100 * 128 + 255 * 127) / 255)]
    assert np.abs(out[0, 2].astype(int) - expected).max() <= 1


def test_palette_with_and_without_transparency():
    palette_image = Image.new("P", (2, 1))
    palette_image.putpalette([10, 20, 30, 200, 100, 50] + [0] * (256 * 3 - 6))
    palette_image.putpixel((0, 0), 0)
    palette_image.putpixel((1, 0), 1)
    assert pixels(encoded(palette_image, "PNG")).tolist() == [[[10, 20, 30], [200, 100, 50]]]
    transparent = encoded(palette_image, "PNG", transparency=0)
    assert pixels(transparent).tolist() == [[[255, 255, 255], [200, 100, 50]]]


def test_greyscale_and_cmyk():
    grey = Image.fromarray(np.array([[0, 77, 255]], dtype=np.uint8))
    assert pixels(encoded(grey, "PNG")).tolist() == [[[0, 0, 0], [77, 77, 77], [255, 255, 255]]]
    cmyk = Image.new("CMYK", (3, 1))
    cmyk.putpixel((0, 0), (255, 0, 0, 0))  # cyan
    cmyk.putpixel((1, 0), (0, 0, 0, 0))    # paper white
    cmyk.putpixel((2, 0), (0, 0, 0, 255))  # black ink
    assert pixels(encoded(cmyk, "TIFF")).tolist() == [[[0, 255, 255], [255, 255, 255], [0, 0, 0]]]


def test_sixteen_bit_greyscale_is_rescaled_not_clipped():
    sixteen = Image.fromarray(np.array([[0, 257 * 77, 32896, 65535]], dtype=np.uint16))
    assert sixteen.mode == "I;16"
    out = pixels(encoded(sixteen, "PNG"))
    assert out[..., 0].tolist() == [[0, 77, 128, 255]]
    assert (out[..., 0] == out[..., 2]).all()


def test_image_sha256_of_path_and_bytes(tmp_path):
    payload = encoded(Image.new("RGB", (4, 4), (1, 2, 3)), "PNG")
    path = tmp_path / "x.png"
    path.write_bytes(payload)
    assert image_sha256(path) == image_sha256(payload) == hashlib.sha256(payload).hexdigest()
    with pytest.raises(ImageLoadError, match="missing_file"):
        image_sha256(tmp_path / "nope.png")


def load_in_thread(path: Path, seconds: float = 5.0) -> BaseException | None:
    """Run load_image(path) in a daemon thread; return what it raised, failing if it has not returned
    within ``seconds`` (a reader blocked on a named pipe never would)."""
    outcome: list[BaseException | None] = []

    def read() -> None:
        try:
            load_image(path)
            outcome.append(None)
        except BaseException as err:  # handed to the test thread
            outcome.append(err)

    worker = threading.Thread(target=read, daemon=True)
    worker.start()
    worker.join(seconds)
    assert outcome, f"load_image({path}) still blocked after {seconds} s"
    return outcome[0]


def test_named_pipe_is_refused_without_being_opened(tmp_path):
    fifo = tmp_path / "1.jpg"
    os.mkfifo(fifo)
    error = load_in_thread(fifo)
    assert isinstance(error, ImageLoadError) and error.kind == "not_a_regular_file"
    assert str(error) == f"not_a_regular_file: {fifo} is a named pipe (FIFO), not a regular file"


def test_directory_is_not_an_image_file(tmp_path):
    with pytest.raises(ImageLoadError, match="is a directory, not a regular file"):
        image_sha256(tmp_path)


def test_non_image_error_gives_kind_and_size_never_content(tmp_path):
    secret = tmp_path / "passwd"
    secret.write_bytes(b"root:x:0:0:root:/root:/bin/bash\n")
    link = tmp_path / "2.jpg"
    link.symlink_to(secret)
    with pytest.raises(ImageLoadError) as info:
        load_image(link)
    assert str(info.value) == "not_an_image: 32 bytes in no image format PIL reads"
    assert "root" not in str(info.value)

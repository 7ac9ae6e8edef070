"""An image's width and height read from its header, without decoding the pixels.

OpenCV has no header-only API, so a huge image would be fully decoded before any size check.
JPEG (the SOF segment) and PNG (the IHDR chunk) are parsed here directly: cheap enough for the
decoding hot loop. Any other content OpenCV might decode is asked of Pillow, which reads only
the header when it opens a file.
"""

from __future__ import annotations

import io
import re
import warnings

from PIL import Image

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Start-of-frame markers (baseline, progressive, lossless, arithmetic); not DHT (C4), JPG (C8)
# or DAC (CC), which share the range.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_HEADER_LIMIT = 1 << 20  # a JPEG whose frame header is not in its first MiB is left to Pillow


class PillowRefused(Exception):
    """Pillow's own bomb guard refused the header; ``pixels`` is what the header declared."""

    def __init__(self, pixels: int) -> None:
        super().__init__(pixels)
        self.pixels = pixels


def image_pixels(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` declared by the header of ``data``, or None when unknown.

    Raises:
        PillowRefused: a format other than JPEG/PNG that declares more pixels than Pillow opens.
    """
    if data[:2] == b"\xff\xd8":
        return jpeg_size(data)
    if data[:8] == _PNG_SIGNATURE:
        if len(data) < 24 or data[12:16] != b"IHDR":
            return None
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return _other_size(data)


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` from a JPEG's frame header, or None when not found."""
    # Indexing bytes instead of slicing keeps this cheap next to the decode in the hot loop.
    n = min(len(data), _HEADER_LIMIT)
    pos = 2
    sof = _SOF_MARKERS
    while pos + 3 < n:
        if data[pos] != 0xFF:
            return None  # not a marker where one should be: the decoder will judge it
        marker = data[pos + 1]
        if marker in sof:
            if pos + 9 > n:
                return None
            return data[pos + 7] << 8 | data[pos + 8], data[pos + 5] << 8 | data[pos + 6]
        if marker == 0xFF:  # fill byte
            pos += 1
        elif 0xD0 <= marker <= 0xD9 or marker == 0x01:  # markers without a length
            pos += 2
        elif marker == 0xDA:  # a scan before any frame header: malformed
            return None
        else:
            pos += 2 + (data[pos + 2] << 8 | data[pos + 3])
    return None


def _other_size(data: bytes) -> tuple[int, int] | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
    except Image.DecompressionBombError as exc:
        # Pillow reports no width and height this large, only the pixel count.
        found = re.search(r"\((\d+) pixels\)", str(exc))
        raise PillowRefused(int(found.group(1)) if found else 0) from None
    except Exception:  # noqa: BLE001 - not an image Pillow knows: the decoder will judge it
        return None
    return int(width), int(height)

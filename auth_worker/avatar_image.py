"""An uploaded avatar made safe to store and serve: decoded, checked, stripped, re-encoded.

docs/profile.md says why each rule is there:

- only JPEG, PNG and WebP are opened (Pillow is told the three formats, so no other decoder of
  its many ever sees the bytes), and the declared type must be one of them;
- the image must end where its format says it ends: bytes after a JPEG's last EOI marker, a
  PNG's IEND chunk or a WebP's RIFF length make a polyglot (a file that is also a ZIP, an HTML
  page...) and are refused rather than cut;
- width × height is checked against ``max_pixels`` from the header, before any pixel is
  decoded (a decompression bomb is refused without allocating it); a JPEG is decoded at a
  reduced scale when it is far larger than the target (libjpeg's DCT scaling), so its memory
  is that of the reduced image;
- a truncated or corrupt image fails to decode and is refused (Pillow's default: truncated
  images are errors);
- the EXIF orientation is applied, then every piece of metadata (EXIF with GPS, XMP, ICC, text
  chunks, comments) is dropped: a new image is encoded from the pixels alone;
- the result is one format (JPEG, quality 85, alpha flattened onto white) with its longest side
  at most ``side`` pixels, so what is stored and served is bounded whatever was uploaded.
"""

from __future__ import annotations

import hashlib
import io
import struct
import warnings
from dataclasses import dataclass
from typing import Final

from PIL import Image, ImageOps, UnidentifiedImageError

from shared.errors import ErrorCode, MPLoginError

ACCEPTED_TYPES: Final = {"image/jpeg": "JPEG", "image/png": "PNG", "image/webp": "WEBP"}
"""The declared types an upload may have, and the decoder each one is opened with."""
STORED_TYPE: Final = "image/jpeg"
QUALITY: Final = 85
_FORMATS: Final = ("JPEG", "PNG", "WEBP")


@dataclass(frozen=True, slots=True)
class CleanImage:
    """The re-encoded avatar."""

    data: bytes
    content_type: str
    width: int
    height: int

    @property
    def etag(self) -> str:
        """A strong entity tag: the content's hash."""
        return '"' + hashlib.sha256(self.data).hexdigest()[:32] + '"'


def invalid(message: str) -> MPLoginError:
    """The ``invalid_image`` error with ``message``."""
    return MPLoginError(ErrorCode.INVALID_IMAGE, message)


def _jpeg_end(data: bytes) -> int:
    """Where a JPEG's image data ends: just after its last EOI marker (FFD9)."""
    index = data.rfind(b"\xff\xd9")
    return -1 if index < 0 else index + 2


def _png_end(data: bytes) -> int:
    """Where a PNG ends: after the IEND chunk's CRC, walking the chunks from the signature."""
    offset = 8
    while offset + 12 <= len(data):
        (length,) = struct.unpack(">I", data[offset:offset + 4])
        kind = data[offset + 4:offset + 8]
        offset += 12 + length
        if kind == b"IEND":
            return int(offset)
    return -1


def _webp_end(data: bytes) -> int:
    """Where a WebP ends: the RIFF header's length plus its 8 bytes of header."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return -1
    (length,) = struct.unpack("<I", data[4:8])
    return int(8 + length + (length & 1))


_ENDS: Final = {"JPEG": _jpeg_end, "PNG": _png_end, "WEBP": _webp_end}


def _check_no_trailer(data: bytes, fmt: str) -> None:
    end = _ENDS[fmt](data)
    if end < 0 or end > len(data):
        raise invalid("The image is truncated.")
    if data[end:].strip(b"\x00"):
        raise invalid("The file holds more than one image: data follows the end of the image.")


def clean_avatar(data: bytes, declared_type: str, *, max_pixels: int, side: int) -> CleanImage:
    """Decode ``data`` as ``declared_type``, check it and re-encode it (see the module's rules).

    CPU-bound: run it in a thread. Raises MPLoginError(invalid_image) for anything refused.
    """
    fmt = ACCEPTED_TYPES.get(declared_type)
    if fmt is None:
        raise MPLoginError(ErrorCode.UNSUPPORTED_MEDIA_TYPE,
                           "Upload a JPEG, PNG or WebP image.")
    if not data:
        raise invalid("The file is empty.")
    try:
        with warnings.catch_warnings():
            # Pillow warns (and only past twice its limit raises) on large images: the explicit
            # pixel check below decides instead.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=_FORMATS) as image:
                if image.format != fmt:
                    raise invalid("The file's content does not match its declared type.")
                width, height = image.size
                if width < 1 or height < 1 or width * height > max_pixels:
                    raise invalid(f"The image has more than {max_pixels} pixels.")
                _check_no_trailer(data, fmt)
                if fmt == "JPEG":
                    # Decode at 1/2, 1/4 or 1/8 scale when that still leaves at least `side`.
                    image.draft("RGB", (side, side))
                image.seek(0)  # an animated PNG or WebP: its first frame
                image.load()
                upright = ImageOps.exif_transpose(image)
                pixels = _flatten(upright)
    except MPLoginError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError):
        raise invalid("The file is not a JPEG, PNG or WebP image.") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, MemoryError):
        raise invalid("The image is truncated or corrupt.") from None
    # Bicubic: for the last step of a reduction (the JPEG decoder did the large part) it looks
    # the same as Lanczos at a faces' size and costs a quarter less (docs/profile.md).
    pixels.thumbnail((side, side), Image.Resampling.BICUBIC)
    out = io.BytesIO()
    # A new image from pixels alone: no exif=, icc_profile= or comment= is passed, so none is
    # written.
    pixels.save(out, format="JPEG", quality=QUALITY, progressive=True)
    return CleanImage(out.getvalue(), STORED_TYPE, pixels.width, pixels.height)


def _flatten(image: Image.Image) -> Image.Image:
    """An RGB copy of ``image``, transparency flattened onto white."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")

"""Units of the avatar path: the image cleaning rules and WeChat's push signature and
safe-mode encryption, checked against the documented layout byte by byte."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import struct

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from PIL import Image

from auth_worker.avatar_image import clean_avatar
from auth_worker.wechat_push import (
    PushError,
    decrypt_message,
    encrypt_message,
    parse_body,
    signature,
    xml_message,
)
from shared.errors import ErrorCode, MPLoginError

AES = base64.b64encode(bytes(range(32))).decode()[:43]


def encode(image: Image.Image, fmt: str, **kw: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **kw)
    return out.getvalue()


def refused(data: bytes, kind: str) -> str:
    with pytest.raises(MPLoginError) as caught:
        clean_avatar(data, kind, max_pixels=4_000_000, side=640)
    assert caught.value.code is ErrorCode.INVALID_IMAGE
    return caught.value.message


@pytest.mark.parametrize("fmt,kind", [("JPEG", "image/jpeg"), ("PNG", "image/png"),
                                      ("WEBP", "image/webp")])
def test_every_accepted_format_comes_out_as_a_bounded_jpeg_without_metadata(
    fmt: str, kind: str,
) -> None:
    exif = Image.Exif()
    exif[0x010F] = "Maker"
    exif.get_ifd(0x8825)[2] = (22.0, 32.0, 7.0)
    exif[0x0112] = 6  # rotated: the stored image is upright (portrait)
    data = encode(Image.new("RGB", (1200, 800), (9, 99, 199)), fmt, exif=exif.tobytes())
    clean = clean_avatar(data, kind, max_pixels=4_000_000, side=640)
    stored = Image.open(io.BytesIO(clean.data))
    assert stored.format == "JPEG" and clean.content_type == "image/jpeg"
    assert stored.size == (427, 640)
    assert not stored.getexif() and b"Maker" not in clean.data
    assert clean.etag == '"' + hashlib.sha256(clean.data).hexdigest()[:32] + '"'


def test_transparency_is_flattened_onto_white() -> None:
    data = encode(Image.new("RGBA", (10, 10), (0, 0, 0, 0)), "PNG")
    clean = clean_avatar(data, "image/png", max_pixels=100, side=640)
    assert Image.open(io.BytesIO(clean.data)).convert("RGB").getpixel((5, 5)) > (250, 250, 250)


def test_what_is_refused() -> None:
    jpeg = encode(Image.new("RGB", (50, 50)), "JPEG")
    png = encode(Image.new("RGB", (50, 50)), "PNG")
    assert "empty" in refused(b"", "image/png")
    assert "truncated" in refused(png[:-30], "image/png") or "corrupt" in refused(
        png[:-30], "image/png")
    assert "more than one image" in refused(png + b"PK\x03\x04zip", "image/png")
    assert "more than one image" in refused(jpeg + b"<html>", "image/jpeg")
    assert "does not match" in refused(jpeg, "image/png")
    assert "pixels" in refused(encode(Image.new("L", (3000, 2000)), "PNG"), "image/png")
    assert "not a JPEG" in refused(b"GIF89a" + os.urandom(100), "image/png")
    with pytest.raises(MPLoginError) as caught:
        clean_avatar(png, "image/gif", max_pixels=100_000, side=640)
    assert caught.value.code is ErrorCode.UNSUPPORTED_MEDIA_TYPE


def test_signature_is_sha1_of_the_sorted_parts() -> None:
    expected = hashlib.sha1(b"".join(sorted([b"tok", b"1700000000", b"nonce"])),
                           usedforsecurity=False).hexdigest()
    assert signature("tok", "1700000000", "nonce") == expected


def test_safe_mode_layout_round_trip_and_refusals() -> None:
    encrypted = encrypt_message('{"a":1}', AES, "wx123")
    key = base64.b64decode(AES + "=")
    raw = base64.b64decode(encrypted)
    plain = Cipher(algorithms.AES(key), modes.CBC(key[:16])).decryptor().update(raw)
    assert len(raw) % 32 == 0
    (length,) = struct.unpack(">I", plain[16:20])
    assert plain[20:20 + length] == b'{"a":1}'
    assert plain[20 + length:].startswith(b"wx123")
    assert decrypt_message(encrypted, AES, "wx123") == '{"a":1}'
    with pytest.raises(PushError):
        decrypt_message(encrypted, AES, "wx999")
    other = base64.b64encode(os.urandom(32)).decode()[:43]
    with pytest.raises(PushError):
        decrypt_message(encrypted, other, "wx123")
    with pytest.raises(PushError):
        decrypt_message("not base64!", AES, "wx123")


def test_bodies_in_json_and_xml_and_no_dtds() -> None:
    fields = {"ToUserName": "gh", "Encrypt": "abc", "result": {"suggest": "pass"}}
    assert parse_body(xml_message(fields), "text/xml") == fields
    assert parse_body('{"Encrypt": "abc"}', "application/json") == {"Encrypt": "abc"}
    with pytest.raises(PushError):
        parse_body('<!DOCTYPE x [<!ENTITY a "b">]><xml><a>&a;</a></xml>', "text/xml")
    with pytest.raises(PushError):
        parse_body("[1]", "application/json")

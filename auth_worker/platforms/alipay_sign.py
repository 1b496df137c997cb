"""Alipay OpenAPI v1 RSA2 signatures (docs/platforms.md §2.2): signing requests, verifying replies.

- Requests: every parameter except ``sign``, empty values dropped, keys in ASCII order, raw
  (not URL-encoded) values joined as ``k=v&k=v``, signed SHA256withRSA with the app's private
  key, base64.
- Replies: the signature covers the **exact raw text** of the ``…_response`` (or
  ``error_response``) node's value as it appears in the body. Re-serialising the parsed JSON
  would change escapes (``\\/``, ``\\u4e2d``), spacing and key order, so the span is located
  in the body text with a JSON-aware scan of the top-level object.

Keys are accepted as PKCS#1 (``BEGIN RSA PRIVATE KEY``) or PKCS#8 (``BEGIN PRIVATE KEY``) PEM,
or as the bare base64 body Alipay's console shows. No error message ever contains key material.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa


class KeyFormatError(ValueError):
    """A key that cannot be used; the message says why, never what the key is."""


_WHITESPACE = re.compile(r"\s+")
_JSON_WS = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


def _pem_or_der(text: str) -> tuple[bytes, bool]:
    """The key bytes and whether they are PEM (else DER from a bare base64 body)."""
    text = text.strip()
    if "-----BEGIN" in text:
        # Keys passed through environment variables often arrive with literal "\n".
        return text.replace("\\n", "\n").encode("ascii", "replace"), True
    try:
        return base64.b64decode(_WHITESPACE.sub("", text), validate=True), False
    except (binascii.Error, ValueError):
        raise KeyFormatError("neither PEM nor base64") from None


@functools.lru_cache(maxsize=128)
def load_private_key(text: str) -> rsa.RSAPrivateKey:
    """An RSA private key from PKCS#1 or PKCS#8 PEM, or a bare base64 DER body."""
    data, is_pem = _pem_or_der(text)
    try:
        if is_pem:
            key = serialization.load_pem_private_key(data, password=None)
        else:
            key = serialization.load_der_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise KeyFormatError("not a readable unencrypted private key") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise KeyFormatError("not an RSA key")
    return key


@functools.lru_cache(maxsize=128)
def load_public_key(text: str) -> rsa.RSAPublicKey:
    """An RSA public key from PEM (SubjectPublicKeyInfo or PKCS#1) or a bare base64 DER body."""
    data, is_pem = _pem_or_der(text)
    try:
        if is_pem:
            key = serialization.load_pem_public_key(data)
        else:
            key = serialization.load_der_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise KeyFormatError("not a readable public key") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise KeyFormatError("not an RSA key")
    return key


def signing_string(params: Mapping[str, str | None]) -> str:
    """The RSA2 content of a request: all params but ``sign``, non-empty, ASCII-sorted, raw."""
    return "&".join(
        f"{key}={value}"
        for key, value in sorted(params.items())
        if key != "sign" and value is not None and value != ""
    )


def sign(content: str, private_key: rsa.RSAPrivateKey) -> str:
    """The base64 SHA256withRSA signature of ``content``'s UTF-8 bytes."""
    signature = private_key.sign(content.encode("utf-8"), padding.PKCS1v15(), hashes.SHA256())
    return base64.b64encode(signature).decode("ascii")


def sign_params(params: Mapping[str, str | None], private_key: rsa.RSAPrivateKey) -> str:
    """The ``sign`` value for a request with these parameters."""
    return sign(signing_string(params), private_key)


def verify(content: str, signature: str, public_key: rsa.RSAPublicKey) -> bool:
    """Whether ``signature`` (base64) is a valid SHA256withRSA signature of ``content``."""
    try:
        raw = base64.b64decode(_WHITESPACE.sub("", signature), validate=True)
        public_key.verify(raw, content.encode("utf-8"), padding.PKCS1v15(), hashes.SHA256())
    except (binascii.Error, ValueError, InvalidSignature):
        return False
    return True


def is_signature_shaped(signature: str, public_key: rsa.RSAPublicKey) -> bool:
    """Whether ``signature`` is base64 of exactly one RSA block of ``public_key``'s size.

    A signature of that shape that does not verify was made with another key (or over other
    bytes); anything else is not a signature at all.
    """
    try:
        raw = base64.b64decode(_WHITESPACE.sub("", signature), validate=True)
    except (binascii.Error, ValueError):
        return False
    return len(raw) == (public_key.key_size + 7) // 8


@dataclass(frozen=True, slots=True)
class SignedNode:
    """A reply's signed node: its name, exact raw text, parsed value, and the reply's ``sign``."""

    name: str
    raw: str = field(repr=False)
    value: Any = field(repr=False)
    sign: str | None = field(repr=False)


def _skip(text: str, pos: int) -> int:
    match = _JSON_WS.match(text, pos)
    return match.end() if match else pos


def top_level_members(text: str) -> list[tuple[str, str, Any]]:
    """Each member of the JSON object ``text`` as (key, exact raw value text, parsed value)."""
    members: list[tuple[str, str, Any]] = []
    pos = _skip(text, 0)
    if text[pos : pos + 1] != "{":
        raise ValueError("not a JSON object")
    pos = _skip(text, pos + 1)
    if text[pos : pos + 1] == "}":
        pos += 1
    else:
        while True:
            if text[pos : pos + 1] != '"':
                raise ValueError("expected a member name")
            key, pos = _DECODER.raw_decode(text, pos)
            pos = _skip(text, pos)
            if text[pos : pos + 1] != ":":
                raise ValueError("expected ':'")
            start = _skip(text, pos + 1)
            value, end = _DECODER.raw_decode(text, start)
            members.append((key, text[start:end], value))
            pos = _skip(text, end)
            if text[pos : pos + 1] == ",":
                pos = _skip(text, pos + 1)
                continue
            if text[pos : pos + 1] == "}":
                pos += 1
                break
            raise ValueError("expected ',' or '}'")
    if _skip(text, pos) != len(text):
        raise ValueError("trailing data after the object")
    return members


def find_signed_node(text: str, names: Iterable[str]) -> SignedNode:
    """The one node among ``names`` in the reply body ``text``, with its raw text and ``sign``.

    Raises ValueError if the body is not a JSON object, holds none or several of the nodes,
    a node or ``sign`` twice, or a ``sign`` that is not a string.
    """
    wanted = set(names)
    found: list[tuple[str, str, Any]] = []
    signs: list[Any] = []
    for key, raw, value in top_level_members(text):
        if key in wanted:
            found.append((key, raw, value))
        elif key == "sign":
            signs.append(value)
    if len(found) != 1:
        raise ValueError(f"expected exactly one of {sorted(wanted)}, found {len(found)}")
    if len(signs) > 1 or (signs and not isinstance(signs[0], str)):
        raise ValueError("sign is repeated or not a string")
    name, raw, value = found[0]
    return SignedNode(name=name, raw=raw, value=value, sign=signs[0] if signs else None)

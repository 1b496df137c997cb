"""WeChat's message push to our server: signatures, safe-mode encryption, JSON and XML bodies.

What the code relies on (docs/platforms.md, "WeChat message push"):

- Server verification (GET): ``signature`` = hex SHA-1 of the push token, ``timestamp`` and
  ``nonce`` sorted as strings and concatenated; the answer is ``echostr`` as is.
- Plain mode (POST): the same ``signature`` in the query; the body is the event.
- Safe mode (POST, ``encrypt_type=aes``): ``msg_signature`` = SHA-1 of the sorted token,
  timestamp, nonce and the body's ``Encrypt`` field. ``Encrypt`` is base64 of AES-256-CBC with
  key = base64-decode(EncodingAESKey + "=") (43 characters → 32 bytes) and IV = the key's first
  16 bytes; the plaintext is 16 random bytes, the message length (4 bytes, big-endian), the
  message, then the app id, padded PKCS#7 to a multiple of 32 bytes.
- The body is JSON (``{"ToUserName": ..., "Encrypt": ...}``) or XML (``<xml><Encrypt>...``),
  as chosen per app in WeChat's console; both are read.

``encrypt_message`` is the inverse, for the sandbox and the tests.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import struct
from typing import Any
from xml.etree import ElementTree

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

BLOCK = 32
MAX_XML_BYTES = 64 * 1024


class PushError(Exception):
    """A push that is refused: bad signature, undecryptable, not for this app, malformed."""


def signature(*parts: str) -> str:
    """WeChat's push signature: SHA-1 of the parts sorted as strings and concatenated."""
    return hashlib.sha1("".join(sorted(parts)).encode(), usedforsecurity=False).hexdigest()


def signature_matches(expected: str, given: str) -> bool:
    """Constant-time comparison of two hex signatures."""
    return hmac.compare_digest(expected.encode(), given.lower().encode())


def aes_key(encoding_aes_key: str) -> bytes:
    """The 32-byte AES key behind a 43-character EncodingAESKey; ValueError when it is not."""
    if len(encoding_aes_key) != 43:
        raise ValueError("an EncodingAESKey has 43 characters")
    key = base64.b64decode(encoding_aes_key + "=", validate=True)
    if len(key) != 32:
        raise ValueError("an EncodingAESKey decodes to 32 bytes")
    return key


def decrypt_message(encrypted: str, encoding_aes_key: str, app_id: str) -> str:
    """The message inside a safe-mode ``Encrypt`` field, checked to be for ``app_id``."""
    key = aes_key(encoding_aes_key)
    try:
        raw = base64.b64decode(encrypted, validate=True)
    except ValueError:
        raise PushError("Encrypt is not base64") from None
    if not raw or len(raw) % 16:
        raise PushError("Encrypt is not whole AES blocks")
    decryptor = Cipher(algorithms.AES(key), modes.CBC(key[:16])).decryptor()
    plain = decryptor.update(raw) + decryptor.finalize()
    pad = plain[-1]
    if not 1 <= pad <= BLOCK or plain[-pad:] != bytes([pad]) * pad:
        raise PushError("bad padding")
    plain = plain[:-pad]
    if len(plain) < 20:
        raise PushError("too short")
    (length,) = struct.unpack(">I", plain[16:20])
    message, tail = plain[20:20 + length], plain[20 + length:]
    if len(message) != length:
        raise PushError("bad length")
    if not hmac.compare_digest(tail, app_id.encode()):
        raise PushError("the message is for another app")
    try:
        return message.decode()
    except UnicodeDecodeError:
        raise PushError("the message is not UTF-8") from None


def encrypt_message(message: str, encoding_aes_key: str, app_id: str) -> str:
    """A safe-mode ``Encrypt`` field holding ``message`` for ``app_id``."""
    key = aes_key(encoding_aes_key)
    body = message.encode()
    plain = os.urandom(16) + struct.pack(">I", len(body)) + body + app_id.encode()
    pad = BLOCK - len(plain) % BLOCK
    plain += bytes([pad]) * pad
    encryptor = Cipher(algorithms.AES(key), modes.CBC(key[:16])).encryptor()
    return base64.b64encode(encryptor.update(plain) + encryptor.finalize()).decode()


def parse_body(body: str, content_type: str) -> dict[str, Any]:
    """A push body as a flat dict of its fields: JSON, or XML (``<xml><Field>...</xml>``)."""
    text = body.strip()
    if text.startswith("{") or "json" in content_type:
        try:
            data = json.loads(text)
        except ValueError:
            raise PushError("the body is not JSON") from None
        if not isinstance(data, dict):
            raise PushError("the body is not a JSON object")
        return data
    if text.startswith("<"):
        return _parse_xml(text)
    raise PushError("the body is neither JSON nor XML")


def _parse_xml(text: str) -> dict[str, Any]:
    # No DTDs and no entities: WeChat's XML has neither, and refusing them keeps entity
    # expansion attacks out of the standard library's parser.
    if "<!DOCTYPE" in text.upper() or "<!ENTITY" in text.upper():
        raise PushError("XML with a DTD is refused")
    if len(text) > MAX_XML_BYTES:
        raise PushError("XML too large")
    try:
        root = ElementTree.fromstring(text)  # noqa: S314 - DTDs refused above
    except ElementTree.ParseError:
        raise PushError("the body is not XML") from None
    return {child.tag: _xml_value(child) for child in root}


def _xml_value(node: ElementTree.Element) -> Any:
    children = list(node)
    if not children:
        return (node.text or "").strip()
    if all(child.tag == children[0].tag for child in children) and len(children) > 1:
        return [_xml_value(child) for child in children]
    return {child.tag: _xml_value(child) for child in children}


def xml_message(fields: dict[str, Any]) -> str:
    """An XML push body of ``fields`` (nested dicts as nested elements), as WeChat writes it."""
    root = ElementTree.Element("xml")
    _fill(root, fields)
    return ElementTree.tostring(root, encoding="unicode")


def _fill(parent: ElementTree.Element, fields: dict[str, Any]) -> None:
    for name, value in fields.items():
        child = ElementTree.SubElement(parent, name)
        if isinstance(value, dict):
            _fill(child, value)
        else:
            child.text = str(value)

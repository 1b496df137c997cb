"""Response models of the gateway's own answers, for the OpenAPI document.

The request bodies are validated by the models in ``gateway.views`` and ``shared.messages``;
these describe what comes back. What a worker answers is modelled in ``shared.messages`` (the
worker builds those very models). Of the gateway's own answers, ``/healthz`` and ``/readyz`` are
built from ``Health`` and ``Ready``. The error envelope (``gateway.errors``) and the JWKS
document (``shared.keyring``) are built as plain dicts on the hot path; ``ErrorEnvelope`` and
``Jwks`` describe them, and the tests check real answers against these models.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.errors import ErrorCode
from shared.messages import IdentityOut, LogoutOut, MeOut, PhoneOut, Profile, ProfileOut

__all__ = [
    "ErrorDetail", "ErrorEnvelope", "Health", "IdentityOut", "Jwk", "Jwks", "LogoutOut", "MeOut",
    "PhoneOut", "Profile", "ProfileOut", "Ready",
]


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ErrorDetail(_Out):
    """What went wrong: a stable code to switch on, a message safe to show, the request's id."""

    code: ErrorCode
    message: str
    request_id: str = Field(description="Also in the X-Request-Id header.")


class ErrorEnvelope(_Out):
    """Every error response of the gateway."""

    error: ErrorDetail


class Jwk(_Out):
    """One public Ed25519 key that verifies access tokens."""

    kty: Literal["OKP"]
    crv: Literal["Ed25519"]
    x: str
    kid: str
    use: Literal["sig"]
    alg: Literal["EdDSA"]


class Jwks(_Out):
    """GET /.well-known/jwks.json."""

    keys: list[Jwk]


class Health(_Out):
    """GET /healthz."""

    status: Literal["ok"]


class Ready(_Out):
    """GET /readyz when the broker connection is up."""

    status: Literal["ready"]
    pending_calls: int = Field(ge=0)

"""Who sent this request? Validates a ZGW JWT the way Open Zaak 1.30 does (commonground-api-common).

The order of the checks decides which error code a broken token gets, so it follows the real server:
decode without verification, look the secret up by `client_id`, verify the signature (HS256 only), then
the time claims (against the injected clock, which PyJWT cannot use), then `iat` + JWT_EXPIRY.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt

BEARER_PREFIX = "Bearer "
INVALID = "JWT is niet valide"  # Open Zaak's detail for every error PyJWT raises
MAX_USER_CLAIM_LENGTH = 255


class AuthError(Exception):
    """A request the server refuses with 403; `code` is the problem `code` Open Zaak returns."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class Identity:
    client_id: str
    user_id: str
    user_representation: str


def pyjwt_code(exc: type[jwt.PyJWTError]) -> str:
    # commonground-api-common turns a PyJWT exception into code "jwt-<classname lower case>".
    return f"jwt-{exc.__name__.lower()}"


def bearer_token(authorization: str | None) -> str | None:
    """The token of a literal `Bearer <token>` header; `bearer …` or `Basic …` count as no token."""
    if authorization is None or not authorization.startswith(BEARER_PREFIX):
        return None
    return authorization[len(BEARER_PREFIX) :]


def _as_int(value: Any, exc: type[jwt.PyJWTError]) -> int:
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        raise AuthError(pyjwt_code(exc), f"Claim is not an integer: {value!r}") from None


class Authenticator:
    def __init__(
        self,
        clients: Mapping[str, str],
        *,
        jwt_expiry: int,
        time_leeway: int,
        clock: Callable[[], float],
    ) -> None:
        # Open Zaak ignores JWTSecrets with an empty secret.
        self._secrets = {client_id: secret for client_id, secret in clients.items() if secret}
        self._expiry = jwt_expiry
        self._leeway = time_leeway
        self._clock = clock

    def authenticate(self, authorization: str | None) -> Identity:
        token = bearer_token(authorization)
        if token is None:
            raise AuthError("permission_denied", "Je hebt geen toestemming om deze actie uit te voeren.")
        try:
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.DecodeError:
            raise AuthError(
                "jwt-decode-error", "Het JWT kon niet gedecodeerd worden. Mogelijks heb je een copy-paste fout gemaakt"
            ) from None
        if "client_id" not in unverified:
            raise AuthError("missing-client-identifier", "Client identifier is niet aanwezig in JWT")
        client_id = unverified["client_id"]
        secret = self._secrets.get(client_id) if isinstance(client_id, str) else None
        if secret is None:
            raise AuthError("invalid-client-identifier", "Client identifier bestaat niet")
        payload = self._verify(token, secret)
        self._check_times(payload)
        return Identity(
            client_id=client_id,
            user_id=self._user_claim(payload, "user_id"),
            user_representation=self._user_claim(payload, "user_representation"),
        )

    def _verify(self, token: str, secret: str) -> dict[str, Any]:
        try:
            # Real deployments use short secrets; PyJWT's key-length warning would flood the log.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", jwt.InsecureKeyLengthWarning)
                return jwt.decode(
                    token,
                    secret,
                    algorithms=["HS256"],
                    options={"verify_exp": False, "verify_nbf": False, "verify_iat": False},
                )
        except jwt.InvalidSignatureError:
            raise AuthError("invalid-jwt-signature", "Client credentials zijn niet geldig") from None
        except jwt.PyJWTError as exc:
            raise AuthError(pyjwt_code(type(exc)), INVALID) from None

    def _check_times(self, payload: dict[str, Any]) -> None:
        now = self._clock()
        # PyJWT's own checks, with the injected clock; an iat in the future is accepted (Open Zaak >= 1.22).
        iat = _as_int(payload["iat"], jwt.InvalidIssuedAtError) if "iat" in payload else None
        if "nbf" in payload and _as_int(payload["nbf"], jwt.DecodeError) > now + self._leeway:
            raise AuthError(pyjwt_code(jwt.ImmatureSignatureError), INVALID)
        if "exp" in payload and _as_int(payload["exp"], jwt.DecodeError) <= now - self._leeway:
            raise AuthError(pyjwt_code(jwt.ExpiredSignatureError), INVALID)
        # vng_api_common.permissions.check_jwt_expiry
        if iat is None:
            raise AuthError("jwt-missing-iat-claim", "Missing required iat claim")
        if now - iat >= self._expiry + self._leeway:
            raise AuthError("jwt-expired", "De JWT die gebruikt is voor dit verzoek is verlopen")

    @staticmethod
    def _user_claim(payload: dict[str, Any], name: str) -> str:
        # Open Zaak writes these into the audit trail; null or a long value fails there with a 500.
        # The sandbox answers 403 `jwt-invalid-user-claim` instead, so a test sees the mistake by name.
        value = payload.get(name, "")
        if not isinstance(value, str) or len(value) > MAX_USER_CLAIM_LENGTH:
            raise AuthError("jwt-invalid-user-claim", f"'{name}' must be a string of at most 255 characters")
        return value

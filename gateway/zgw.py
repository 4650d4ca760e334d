"""What ZGW servers say and expect, in one place (docs/zgw.md: "403 codes", "Problem answers", "CRS headers")."""

from __future__ import annotations

import json
from typing import Final, Literal, get_args

# The one coordinate reference system the Zaken API accepts in Accept-Crs / Content-Crs (docs/zgw.md, "CRS
# headers"); config.sections.Component.crs takes this type.
Crs = Literal["EPSG:4326"]
CRS: Final[str] = get_args(Crs)[0]

# The problem codes a ZGW server answers 403 with (docs/zgw.md, "403 codes"), and what each says about the
# caller's credentials in the control plane's words; None: the token is malformed, which a minted one never
# is. Metrics count any code not listed as 'other'.
FORBIDDEN: Final[dict[str, str | None]] = {
    "permission_denied": "no rights",
    "invalid-jwt-signature": "secret mismatch",
    "invalid-client-identifier": "unknown client",
    "missing-client-identifier": "unknown client",
    "jwt-expired": "clock",
    "jwt-expiredsignatureerror": "clock",
    "jwt-immaturesignatureerror": "clock",
    "jwt-missing-iat-claim": None,
    "jwt-decode-error": None,
    "jwt-invalidalgorithmerror": None,
    "jwt-invalidaudienceerror": None,
}
FORBIDDEN_CODES: Final = frozenset(FORBIDDEN)

# With which of those a server says "this token has expired": evict it, mint anew, retry once.
EXPIRED_CODES: Final = frozenset(code for code, meaning in FORBIDDEN.items() if meaning == "clock")


def problem_code(body: bytes) -> str:
    """The `code` of a ZGW problem answer (docs/zgw.md, "Problem answers"), or '' when the body has none."""
    try:
        data = json.loads(body)
    except ValueError:  # UnicodeDecodeError is one too
        return ""
    code = data.get("code") if isinstance(data, dict) else None
    return code if isinstance(code, str) else ""

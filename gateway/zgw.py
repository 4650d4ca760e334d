"""What ZGW servers say and expect, in one place (../shared/ZGW.md sections 3 and 4)."""

from __future__ import annotations

# The one coordinate reference system the Zaken API accepts in Accept-Crs / Content-Crs.
CRS = "EPSG:4326"

# The problem codes a ZGW server answers 403 with; metrics count anything else as 'other'.
FORBIDDEN_CODES = frozenset(
    {
        "permission_denied", "invalid-jwt-signature", "invalid-client-identifier", "missing-client-identifier",
        "jwt-expired", "jwt-expiredsignatureerror", "jwt-immaturesignatureerror", "jwt-missing-iat-claim",
        "jwt-decode-error", "jwt-invalidalgorithmerror", "jwt-invalidaudienceerror",
    }
)  # fmt: skip

# With which of those a server says "this token has expired": evict it, mint anew, retry once.
EXPIRED_CODES = frozenset({"jwt-expired", "jwt-expiredsignatureerror", "jwt-immaturesignatureerror"})

"""What stands behind the gateway in the demo and the tests? A strict in-memory ZGW server.

It authenticates like Open Zaak 1.30 (every failure a 403 with Open Zaak's `code`), enforces the Zaken API's
CRS headers, and builds absolute URLs from the request's Host. The seed data has stable UUIDs.
"""

from zgw_sandbox.app import create_sandbox_app
from zgw_sandbox.catalogi import CATALOGUS_UUID, INFORMATIEOBJECTTYPE_UUID, ZAAKTYPE_UUID

__all__ = ["CATALOGUS_UUID", "INFORMATIEOBJECTTYPE_UUID", "ZAAKTYPE_UUID", "create_sandbox_app"]

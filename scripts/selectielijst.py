"""A local, read-only Selectielijst API on the data that ships in Open Zaak's source, so catalogues publish offline.

Serves `procestypen`, `resultaten` and `resultaattypeomschrijvingen` (lists and items) and the API's OpenAPI
document from `src/openzaak/selectielijst/tests/files/`, with the public service's base URL replaced by this
server's own. Open Zaak fetches these when it validates a zaaktype's `selectielijstProcestype` and a
resultaattype's `selectielijstklasse` and `resultaattypeomschrijving`. Standard library only: it runs on any
Python 3.
"""

from __future__ import annotations

import argparse
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

PUBLIC_BASE = "https://selectielijst.openzaak.nl/api/v1/"


class Data:
    """The shipped files, with their URLs pointing at `base`."""

    def __init__(self, files: Path, base: str) -> None:
        def load(name: str) -> Any:
            return json.loads((files / name).read_text().replace(PUBLIC_BASE, base))

        self.procestypen = {"2017": load("procestypen.json"), "2020": load("procestypen_2020.json")}
        self.resultaten = load("resultaten.json")["results"]
        self.omschrijvingen = load("resultaattypeomschrijvingen.json")
        self.schema = (files / "selectielijst.yaml").read_bytes()
        self.items = {
            item["url"].rstrip("/").rsplit("/", 1)[-1]: item
            for item in [*self.procestypen["2017"], *self.procestypen["2020"], *self.resultaten, *self.omschrijvingen]
        }

    def answer(self, resource: str, ident: str | None, query: dict[str, list[str]]) -> Any:
        if ident is not None:
            return self.items.get(ident)
        if resource == "procestypen":
            return self.procestypen.get(query.get("jaar", ["2017"])[0], [])
        if resource == "resultaattypeomschrijvingen":
            return self.omschrijvingen
        if resource == "resultaten":
            wanted = query.get("procesType", [None])[0]
            results = [r for r in self.resultaten if wanted is None or r["procesType"] == wanted]
            return {"count": len(results), "next": None, "previous": None, "results": results}
        return None


def handler(data: Data) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urlsplit(self.path)
            parts = [p for p in url.path.split("/") if p]
            if parts[:2] != ["api", "v1"] or len(parts) < 3:
                return self.send(404, b'{"detail": "Niet gevonden."}')
            if parts[2:] == ["schema", "openapi.yaml"]:
                return self.send(200, data.schema, "application/vnd.oai.openapi")
            body = data.answer(parts[2], parts[3] if len(parts) > 3 else None, parse_qs(url.query))
            if body is None:
                return self.send(404, b'{"detail": "Niet gevonden."}')
            return self.send(200, json.dumps(body).encode())

        def send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--files", type=Path, required=True, help="Open Zaak's selectielijst/tests/files")
    args = parser.parse_args()
    data = Data(args.files, f"http://127.0.0.1:{args.port}/api/v1/")
    ThreadingHTTPServer(("127.0.0.1", args.port), handler(data)).serve_forever()


if __name__ == "__main__":
    main()

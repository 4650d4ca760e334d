"""Where secret values come from: `{env: NAME}` and `{file: PATH}` references, re-read when files change.

Values never leave this module except through `get`; errors and logs name the reference
(`file:/var/run/secrets/zgw/dms`), never the value. A file that disappears or turns empty keeps its last
good value: a Kubernetes Secret update swaps the `..data` symlink, and a reader must never see a gap.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from gateway.config.sections import SecretRef

log = logging.getLogger("zgw_gateway.secrets")


@dataclass(slots=True)
class _Entry:
    value: str | None = None
    version: int = 0
    stamp: tuple[int, int, int] | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class PollResult:
    changed: list[SecretRef]
    failed: list[SecretRef]


class SecretStore:
    """Resolves secret references and notices when file-backed ones change."""

    def __init__(self, refs: Iterable[SecretRef], environ: Mapping[str, str] | None = None) -> None:
        self._environ = os.environ if environ is None else environ
        self._entries: dict[SecretRef, _Entry] = {}
        self._versions = 0
        self.update(refs)

    def update(self, refs: Iterable[SecretRef]) -> None:
        """Follow a new config: references still in use keep their value and version, new ones are read,
        dropped ones forgotten."""
        entries = {ref: self._entries.get(ref) or _Entry() for ref in refs}
        self._entries = entries
        for ref, entry in entries.items():
            if entry.version == 0:
                self._refresh(ref)

    def get(self, ref: SecretRef) -> str | None:
        """The current value, or None when the secret has never been readable."""
        entry = self._entries.get(ref)
        return entry.value if entry else None

    def current(self, ref: SecretRef) -> tuple[str | None, int]:
        """The value (as `get`) and its version: a number no other value of any reference has had in this
        process, part of the token cache key; 0 for an unknown reference. One lookup: this runs per request."""
        entry = self._entries.get(ref)
        return (entry.value, entry.version) if entry else (None, 0)

    def problems(self) -> list[str]:
        """One message per unreadable reference, naming the reference and never a value."""
        return [
            f"{ref.describe()}: {entry.error}"
            for ref, entry in self._entries.items()
            if entry.value is None and entry.error
        ]

    def problem(self, ref: SecretRef) -> str | None:
        """Why `ref` has no value (never the value), or None when it has one."""
        entry = self._entries.get(ref)
        return None if entry is None or entry.value is not None else entry.error

    def ready(self) -> bool:
        return all(entry.value is not None for entry in self._entries.values())

    def poll(self) -> PollResult:
        """Re-read file references whose file changed. Cheap: one stat() per file when nothing changed."""
        changed: list[SecretRef] = []
        failed: list[SecretRef] = []
        for ref in self._entries:
            if ref.file is None and self._entries[ref].value is not None:
                continue
            before = self._entries[ref].version
            had_error = self._entries[ref].error
            self._refresh(ref)
            entry = self._entries[ref]
            if entry.version != before:
                changed.append(ref)
            elif entry.error and entry.error != had_error:
                failed.append(ref)
        return PollResult(changed, failed)

    def _refresh(self, ref: SecretRef) -> None:
        entry = self._entries[ref]
        if ref.env is not None:
            value = self._environ.get(ref.env)
            if not value:
                entry.error = "the environment variable is not set or empty"
                return
            self._set(entry, value, None)
            return
        assert ref.file is not None  # guaranteed by SecretRef's validator
        try:
            st = os.stat(ref.file)  # follows the ..data symlink of a mounted Secret
        except OSError as exc:
            self._fail(ref, entry, f"cannot read the file ({exc.strerror})")
            return
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp == entry.stamp and entry.value is not None:
            return
        try:
            with open(ref.file, encoding="utf-8") as fh:
                value = fh.read().rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            self._fail(ref, entry, f"cannot read the file ({reason})")
            return
        if not value:
            self._fail(ref, entry, "the file is empty")
            return
        self._set(entry, value, stamp)

    def _set(self, entry: _Entry, value: str, stamp: tuple[int, int, int] | None) -> None:
        entry.stamp = stamp
        entry.error = None
        if value != entry.value:
            entry.value = value
            self._versions += 1
            entry.version = self._versions

    @staticmethod
    def _fail(ref: SecretRef, entry: _Entry, reason: str) -> None:
        if entry.error != reason:
            if entry.value is not None:
                log.warning(
                    "secret unreadable, keeping the last good value",
                    extra={"event": "secret_unreadable", "secret": ref.describe(), "reason": reason},
                )
            entry.error = reason

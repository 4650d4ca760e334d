"""Where scripts/openzaak and scripts/opennotificaties get a product's source, checked before anything is installed.

The source is, in this order:

1. `--source PATH`: a directory (a checkout) or a release archive (.tar.gz);
2. `$<PRODUCT>_SOURCE` (OPENZAAK_SOURCE, OPENNOTIFICATIES_SOURCE), the same;
3. the archive in the shared folder beside the checkout (`../shared/<product>/`), where this project's machines
   and CI keep it, offline;
4. the release archive of the pinned tag, downloaded from the product's public repository
   (`$<PRODUCT>_SOURCE_URL` overrides the URL, e.g. for a mirror).

An archive is accepted only when the commit id in its pax global header - which every `git archive` writes, GitHub's
release archives included; `gzip -dc ARCHIVE | git get-tar-commit-id` prints it - is the pinned commit. A directory
is accepted when it is a git checkout whose HEAD is the pinned commit, or, without git metadata, when its version
file declares the pinned version (the commit cannot be checked then, and the log says so). What is refused is
neither unpacked nor installed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tarfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# A download that cannot connect, or stalls, ends after this many seconds; a whole download after DEADLINE.
DOWNLOAD_TIMEOUT = 15.0
DOWNLOAD_DEADLINE = 900.0


class Failure(Exception):
    """A step that cannot complete; the message says what to do."""


@dataclass(frozen=True)
class Release:
    name: str  # "Open Zaak"
    script: str  # "scripts/openzaak"
    env: str  # prefix of the environment variables: OPENZAAK -> OPENZAAK_SOURCE, OPENZAAK_SOURCE_URL
    repository: str  # its public home
    tag: str
    commit: str  # what the tag points at
    version_file: str  # relative to the source root; declares `__version__ = "<tag>"`
    shared: Path  # the archive in the shared folder beside the checkout

    @property
    def url(self) -> str:
        default = f"{self.repository}/archive/refs/tags/{self.tag}.tar.gz"
        return os.environ.get(f"{self.env}_SOURCE_URL") or default

    def alternative(self) -> str:
        return (
            f"pass {self.script} install --source PATH (a checkout of tag {self.tag}, or its release archive "
            f"{self.repository}/archive/refs/tags/{self.tag}.tar.gz downloaded elsewhere), or set {self.env}_SOURCE"
        )


def add_commands(
    sub: argparse._SubParsersAction,  # type: ignore[type-arg]
    release: Release,
    fetch: Callable[[argparse.Namespace], int],
    install: Callable[[argparse.Namespace], int],
) -> None:
    """The `fetch` and `install` subcommands, both with `--source PATH`."""
    for name, func, text in (
        ("fetch", fetch, f"the checked source of {release.name} {release.tag} into the state directory (idempotent)"),
        ("install", install, "fetch, then install and configure (idempotent)"),
    ):
        parser = sub.add_parser(name, help=text)
        parser.add_argument("--source", metavar="PATH", help=f"a checkout of tag {release.tag} or its release archive")
        parser.set_defaults(func=func)


def fetch(release: Release, home: Path, source: str | None, log: Callable[[str], None]) -> Path:
    """The verified source unpacked in `home/src` (idempotent); returns that folder."""
    src = home / "src"
    marker = src / ".unpacked"
    # An empty marker: unpacked by an earlier version of these scripts, always from the pinned shared archive.
    unpacked = marker.exists() and marker.read_text().strip() in ("", release.commit)
    source = source or os.environ.get(f"{release.env}_SOURCE") or None
    if source is None and unpacked:
        return src
    downloaded = None
    if source is not None:
        path = Path(source).expanduser().resolve()
        if not path.exists():
            raise Failure(f"--source {source}: no such file or directory")
    elif release.shared.exists():
        path = release.shared
    else:
        path = downloaded = download(release, home / "download", log)
    try:
        if path.is_dir():
            how = check_directory(release, path)
        else:
            check_archive(release, path)
            how = f"archive of commit {release.commit}"
        log(f"source: {path} ({how})")
        if not unpacked:
            home.mkdir(parents=True, exist_ok=True)
            unpack(path, home)
            marker.write_text(release.commit + "\n")
    finally:
        if downloaded is not None:
            downloaded.unlink(missing_ok=True)
    return src


def download(release: Release, folder: Path, log: Callable[[str], None]) -> Path:
    url = release.url
    if not url.startswith(("https://", "http://")):
        raise Failure(f"{release.env}_SOURCE_URL must be an http(s) URL, not {url!r}")
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{release.repository.rsplit('/', 1)[-1]}-{release.tag}.tar.gz"
    partial = target.with_name(target.name + ".part")
    log(f"downloading {url}")
    deadline = time.monotonic() + DOWNLOAD_DEADLINE
    try:
        with (
            urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as response,  # noqa: S310 - http(s) only, above
            open(partial, "wb") as out,
        ):
            while chunk := response.read(2**20):
                out.write(chunk)
                if time.monotonic() > deadline:
                    raise TimeoutError(f"not complete after {DOWNLOAD_DEADLINE:.0f} s")
    except (OSError, ValueError) as exc:  # URLError, HTTPError, timeouts and refused connections are OSErrors
        partial.unlink(missing_ok=True)
        raise Failure(f"could not download {url}: {exc}; {release.alternative()}") from exc
    partial.replace(target)
    return target


def archive_commit(path: Path) -> str | None:
    """The commit id `git archive` wrote into the archive's pax global header; None when there is none."""
    try:
        with tarfile.open(path) as tar:
            comment = tar.pax_headers.get("comment")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise Failure(f"{path} is not a readable tar archive: {exc}") from exc
    return comment.strip() if comment else None


def check_archive(release: Release, path: Path) -> None:
    commit = archive_commit(path)
    if commit != release.commit:
        found = f"commit {commit}" if commit else "no commit id in its header (not made by git archive)"
        raise Failure(
            f"{path} is not {release.name} {release.tag}: it carries {found}, the tag is commit {release.commit}; "
            "nothing installed"
        )


def check_directory(release: Release, path: Path) -> str:
    """A git checkout at the pinned commit, or (without git metadata) a tree declaring the pinned version."""
    if (path / ".git").exists() and shutil.which("git"):
        head = subprocess.run(
            ["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=60, check=False
        )
        if head.returncode != 0 or head.stdout.strip() != release.commit:
            found = head.stdout.strip() or head.stderr.strip()
            raise Failure(
                f"{path} is not {release.name} {release.tag}: its HEAD is {found}, the tag is commit "
                f"{release.commit} (git checkout {release.tag}); nothing installed"
            )
        return f"git checkout at commit {release.commit}"
    version = path / release.version_file
    declared = f'__version__ = "{release.tag}"'
    if not version.is_file() or declared not in version.read_text(errors="replace"):
        raise Failure(
            f"{path} is not {release.name} {release.tag}: {release.version_file} does not declare {declared}; "
            "nothing installed"
        )
    return f"{release.version_file} declares {release.tag}; no git metadata, so the commit is not checked"


def unpack(path: Path, home: Path) -> None:
    """Into `home/src`, through `home/unpack`, so a failed unpack leaves no half source behind."""
    staging = home / "unpack"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    if path.is_dir():
        top = path.name
        ignore = shutil.ignore_patterns(".git", "node_modules", "__pycache__")
        shutil.copytree(path, staging / top, symlinks=True, ignore=ignore)
    else:
        if not hasattr(tarfile, "data_filter"):
            raise Failure("unpacking an archive safely needs Python >= 3.11.4 (tarfile's data filter)")
        with tarfile.open(path) as tar:
            tops = {member.name.split("/")[0] for member in tar.getmembers()}
            if len(tops) != 1:
                raise Failure(f"{path}: expected one top folder, found {sorted(tops)[:5]}")
            top = tops.pop()
            tar.extractall(staging, filter="data")  # refuses absolute paths, `..` and links out of the folder
    src = home / "src"
    shutil.rmtree(src, ignore_errors=True)
    (staging / top).rename(src)
    staging.rmdir()

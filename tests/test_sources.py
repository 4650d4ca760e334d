"""Where scripts/openzaak and scripts/opennotificaties get their source (scripts/_source.py), as in a clone with no
shared folder beside it: the pinned tag's release archive from a download URL (here a server on 127.0.0.1), or
`--source PATH`. An archive carries its commit in the pax global header, as `git archive` writes it; one of another
commit is refused and nothing is unpacked. No system package is touched: `fetch` only unpacks, and `install`
refuses a wrong source before it would install any."""

from __future__ import annotations

import importlib.util
import io
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from servers import ROOT, ThreadServer, free_port
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

# script -> (state directory variable, environment prefix, top folder of the release archive)
PRODUCTS = {
    "openzaak": ("OPENZAAK_HOME", "OPENZAAK", "open-zaak-1.30.0"),
    "opennotificaties": ("OPENNOTIFICATIES_HOME", "OPENNOTIFICATIES", "open-notificaties-1.16.1"),
}
OTHER_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def load_source() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_source_under_test", ROOT / "scripts" / "_source.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


def pinned(script: str) -> str:
    """The commit the script pins, read from the script itself."""
    text = (ROOT / "scripts" / script).read_text()
    return text.split('commit="', 1)[1].split('"', 1)[0]


def make_archive(path: Path, commit: str | None, top: str) -> Path:
    """A tiny release archive as `git archive` makes it: the commit in a pax global header, one top folder."""
    headers = {"comment": commit} if commit else {}
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT, pax_headers=headers) as tar:
        for name, content in {"README.rst": b"the source\n", "src/manage.py": b"# manage\n"}.items():
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return path


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    """The scripts in a checkout with nothing beside it (no ../shared), as anyone's clone of the repository."""
    checkout = tmp_path / "checkout"
    (checkout / "scripts").mkdir(parents=True)
    for name in ("openzaak", "opennotificaties", "_source.py"):
        shutil.copy2(ROOT / "scripts" / name, checkout / "scripts" / name)
    assert not (tmp_path / "shared").exists()
    return checkout


def run(clone: Path, script: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("OPENZAAK", "OPENNOTIFICATIES"))}
    environment.update({PRODUCTS[script][0]: str(home(clone, script))}, **env)
    return subprocess.run(
        [sys.executable, str(clone / "scripts" / script), *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def home(clone: Path, script: str) -> Path:
    return clone.parent / f"home-{script}"


@pytest.fixture
def archives() -> Iterator[tuple[dict[str, bytes], str]]:
    """A server on 127.0.0.1 answering GET /<name> with the bytes put in the dict (404 otherwise)."""
    served: dict[str, bytes] = {}

    async def archive(request: Request) -> Response:
        body = served.get(request.path_params["name"])
        return Response(body, media_type="application/gzip") if body is not None else Response(status_code=404)

    with ThreadServer(Starlette(routes=[Route("/{name}", archive)])) as server:
        yield served, server.url


def fetch_served(
    script: str, clone: Path, archives: tuple[dict[str, bytes], str], commit: str
) -> subprocess.CompletedProcess[str]:
    """`fetch` with the download URL pointed at a served archive of `commit`."""
    served, url = archives
    _, prefix, top = PRODUCTS[script]
    served["release.tar.gz"] = make_archive(clone.parent / "served.tar.gz", commit, top).read_bytes()
    return run(clone, script, "fetch", **{f"{prefix}_SOURCE_URL": f"{url}/release.tar.gz"})


@pytest.mark.parametrize("script", PRODUCTS)
def test_the_pinned_release_archive_is_downloaded_checked_and_unpacked(
    script: str, clone: Path, archives: tuple[dict[str, bytes], str]
) -> None:
    served, url = archives
    result = fetch_served(script, clone, archives, pinned(script))
    assert result.returncode == 0, result.stderr
    assert f"downloading {url}/release.tar.gz" in result.stderr
    src = home(clone, script) / "src"
    assert (src / "src" / "manage.py").read_text() == "# manage\n"
    assert (src / ".unpacked").read_text().strip() == pinned(script)
    assert not list((home(clone, script) / "download").iterdir())  # the archive is not kept
    # Once unpacked, fetch neither downloads nor unpacks again.
    served.clear()
    again = run(clone, script, "fetch", **{f"{PRODUCTS[script][1]}_SOURCE_URL": f"{url}/release.tar.gz"})
    assert again.returncode == 0, again.stderr
    assert "downloading" not in again.stderr


@pytest.mark.parametrize("script", PRODUCTS)
def test_a_downloaded_archive_of_another_commit_is_refused(
    script: str, clone: Path, archives: tuple[dict[str, bytes], str]
) -> None:
    result = fetch_served(script, clone, archives, OTHER_COMMIT)
    assert result.returncode == 1
    assert f"carries commit {OTHER_COMMIT}" in result.stderr
    assert f"the tag is commit {pinned(script)}" in result.stderr
    assert "nothing installed" in result.stderr
    assert not (home(clone, script) / "src").exists()
    assert not list((home(clone, script) / "download").iterdir())


@pytest.mark.parametrize("script", PRODUCTS)
def test_an_unreachable_download_fails_at_once_naming_the_url_and_source(script: str, clone: Path) -> None:
    _, prefix, _ = PRODUCTS[script]
    url = f"http://127.0.0.1:{free_port()}/release.tar.gz"  # nothing listens there
    result = run(clone, script, "fetch", **{f"{prefix}_SOURCE_URL": url})
    assert result.returncode == 1
    assert f"could not download {url}" in result.stderr
    assert f"scripts/{script} install --source PATH" in result.stderr
    assert not (home(clone, script) / "src").exists()


def test_a_missing_http_answer_is_a_failed_download(clone: Path, archives: tuple[dict[str, bytes], str]) -> None:
    _, url = archives
    result = run(clone, "openzaak", "fetch", OPENZAAK_SOURCE_URL=f"{url}/missing.tar.gz")
    assert result.returncode == 1
    assert f"could not download {url}/missing.tar.gz: HTTP Error 404" in result.stderr


@pytest.mark.parametrize("script", PRODUCTS)
def test_a_source_archive_is_checked_the_same_way(script: str, clone: Path, tmp_path: Path) -> None:
    _, prefix, top = PRODUCTS[script]
    other = make_archive(tmp_path / "other.tar.gz", OTHER_COMMIT, top)
    refused = run(clone, script, "fetch", "--source", str(other))
    assert refused.returncode == 1
    assert f"carries commit {OTHER_COMMIT}" in refused.stderr
    assert not (home(clone, script) / "src").exists()
    unmarked = make_archive(tmp_path / "plain.tar.gz", None, top)  # a tar not made by git archive
    refused = run(clone, script, "fetch", **{f"{prefix}_SOURCE": str(unmarked)})
    assert refused.returncode == 1
    assert "no commit id in its header" in refused.stderr
    assert not (home(clone, script) / "src").exists()
    good = make_archive(tmp_path / "good.tar.gz", pinned(script), top)
    accepted = run(clone, script, "fetch", "--source", str(good))
    assert accepted.returncode == 0, accepted.stderr
    assert (home(clone, script) / "src" / "README.rst").exists()
    # An explicit source is checked even when the pinned source is already unpacked.
    again = run(clone, script, "fetch", "--source", str(other))
    assert again.returncode == 1
    assert (home(clone, script) / "src" / "README.rst").exists()


def test_install_refuses_a_wrong_source_before_installing_anything(clone: Path, tmp_path: Path) -> None:
    other = make_archive(tmp_path / "other.tar.gz", OTHER_COMMIT, "open-zaak-1.30.0")
    result = run(clone, "openzaak", "install", "--source", str(other))
    assert result.returncode == 1
    assert f"carries commit {OTHER_COMMIT}" in result.stderr
    assert "system packages" not in result.stderr
    assert not (home(clone, "openzaak") / "state.json").exists()


def test_a_directory_source_is_a_checkout_at_the_pinned_commit_or_declares_the_version(
    clone: Path, tmp_path: Path
) -> None:
    tree = tmp_path / "open-zaak"
    (tree / "src" / "openzaak").mkdir(parents=True)
    version = tree / "src" / "openzaak" / "__init__.py"
    version.write_text('__version__ = "1.29.0"\n')
    refused = run(clone, "openzaak", "fetch", "--source", str(tree))
    assert refused.returncode == 1
    assert 'does not declare __version__ = "1.30.0"' in refused.stderr
    version.write_text('__version__ = "1.30.0"\n')
    accepted = run(clone, "openzaak", "fetch", "--source", str(tree))
    assert accepted.returncode == 0, accepted.stderr
    assert "the commit is not checked" in accepted.stderr
    assert (home(clone, "openzaak") / "src" / "src" / "openzaak" / "__init__.py").exists()

    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", "-C", str(tree)]
    subprocess.run([*git, "init", "-q"], check=True, timeout=60)
    subprocess.run([*git, "add", "."], check=True, timeout=60)
    subprocess.run([*git, "commit", "-qm", "not the tag"], check=True, timeout=60)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=60)
    checkout = run(clone, "openzaak", "fetch", "--source", str(tree))
    assert checkout.returncode == 1
    assert f"its HEAD is {head.stdout.strip()}" in checkout.stderr


def test_the_commit_is_read_where_git_archive_writes_it(tmp_path: Path) -> None:
    """A real `git archive` (what GitHub serves for a tag) carries the commit where _source.py looks for it."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "README").write_text("x\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", "-C", str(repo)]
    subprocess.run([*git, "init", "-q"], check=True, timeout=60)
    subprocess.run([*git, "add", "."], check=True, timeout=60)
    subprocess.run([*git, "commit", "-qm", "x"], check=True, timeout=60)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=60)
    archive = tmp_path / "repo-1.0.tar.gz"
    subprocess.run([*git, "archive", "--prefix=repo-1.0/", "-o", str(archive), "HEAD"], check=True, timeout=60)
    assert load_source().archive_commit(archive) == head.stdout.strip()
    # and the test's own archives are read the same way by git
    made = make_archive(tmp_path / "made.tar.gz", OTHER_COMMIT, "x")
    unzipped = subprocess.run(["gzip", "-dc", str(made)], capture_output=True, check=True, timeout=60).stdout
    printed = subprocess.run(["git", "get-tar-commit-id"], input=unzipped, capture_output=True, timeout=60)
    assert printed.stdout.decode().strip() == OTHER_COMMIT

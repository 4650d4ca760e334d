"""Resolving secret references and noticing changes (gateway.config.secrets)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from gateway.config.secrets import SecretStore
from gateway.config.sections import SecretRef

VALUE = "s3cr3t-value-7a9c1e3b5d"


def test_an_env_reference_resolves() -> None:
    ref = SecretRef(env="ZGW_SECRET")
    store = SecretStore([ref], environ={"ZGW_SECRET": VALUE})
    assert store.get(ref) == VALUE
    assert store.current(ref)[1] == 1
    assert store.ready()
    assert store.problems() == []


def test_a_missing_or_empty_env_variable_is_a_problem_naming_the_reference() -> None:
    missing, empty = SecretRef(env="ABSENT"), SecretRef(env="EMPTY")
    store = SecretStore([missing, empty], environ={"EMPTY": ""})
    assert store.get(missing) is None and store.get(empty) is None
    assert not store.ready()
    assert store.problems() == [
        "env:ABSENT: the environment variable is not set or empty",
        "env:EMPTY: the environment variable is not set or empty",
    ]


def test_an_env_variable_set_later_is_found_by_poll() -> None:
    ref = SecretRef(env="LATER")
    env: dict[str, str] = {}
    store = SecretStore([ref], environ=env)
    env["LATER"] = VALUE
    assert store.poll().changed == [ref]
    assert store.get(ref) == VALUE and store.ready()


def test_a_file_reference_resolves_without_its_trailing_newline(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text(VALUE + "\r\n", encoding="utf-8")
    ref = SecretRef(file=path)
    store = SecretStore([ref])
    assert store.get(ref) == VALUE
    assert store.poll().changed == []
    assert store.current(ref)[1] == 1


def test_an_unknown_reference_is_none() -> None:
    store = SecretStore([])
    assert store.get(SecretRef(env="NOPE")) is None
    assert store.current(SecretRef(env="NOPE"))[1] == 0
    assert store.ready()


def _kubernetes_secret(directory: Path, stamp: str, value: str) -> None:
    """The layout kubelet writes for a mounted Secret: timestamped dir, `..data` link, per-key links."""
    directory.mkdir(exist_ok=True)
    (directory / stamp).mkdir()
    (directory / stamp / "key").write_text(value + "\n", encoding="utf-8")
    if not (directory / "..data").is_symlink():
        os.symlink(stamp, directory / "..data")
        os.symlink("..data/key", directory / "key")
        return
    # kubelet's atomic update: a new ..data link renamed over the old one.
    os.symlink(stamp, directory / "..data_tmp")
    os.replace(directory / "..data_tmp", directory / "..data")


def test_a_kubernetes_secret_update_is_seen_by_poll(tmp_path: Path) -> None:
    mount = tmp_path / "zgw"
    _kubernetes_secret(mount, "..2026_01_01_00_00_00.1", "first")
    ref = SecretRef(file=mount / "key")
    store = SecretStore([ref])
    assert store.get(ref) == "first"
    assert store.current(ref)[1] == 1
    assert store.poll().changed == []

    _kubernetes_secret(mount, "..2026_01_02_00_00_00.2", "second")
    result = store.poll()
    assert result.changed == [ref] and result.failed == []
    assert store.get(ref) == "second"
    assert store.current(ref)[1] == 2

    _kubernetes_secret(mount, "..2026_01_03_00_00_00.3", "second")  # same value, new files
    assert store.poll().changed == []
    assert store.current(ref)[1] == 2


def test_a_same_size_rewrite_in_place_is_seen(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text("aaaa", encoding="utf-8")
    ref = SecretRef(file=path)
    store = SecretStore([ref])
    path.write_text("bbbb", encoding="utf-8")
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert store.poll().changed == [ref]
    assert store.get(ref) == "bbbb"


def test_a_deleted_file_keeps_the_last_good_value_and_fails_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "secret"
    path.write_text(VALUE, encoding="utf-8")
    ref = SecretRef(file=path)
    store = SecretStore([ref])
    path.unlink()
    with caplog.at_level(logging.WARNING, logger="zgw_gateway.secrets"):
        first = store.poll()
        second = store.poll()
    assert first.failed == [ref] and first.changed == []
    assert second.failed == [] and second.changed == []
    assert store.get(ref) == VALUE
    assert store.ready()
    assert store.problems() == []  # a last good value is no readiness problem
    assert VALUE not in caplog.text
    assert len([r for r in caplog.records if getattr(r, "event", None) == "secret_unreadable"]) == 1

    path.write_text("new-" + VALUE, encoding="utf-8")
    result = store.poll()
    assert result.changed == [ref] and store.get(ref) == "new-" + VALUE


def test_an_emptied_file_keeps_the_last_good_value(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text(VALUE, encoding="utf-8")
    ref = SecretRef(file=path)
    store = SecretStore([ref])
    path.write_text("\n", encoding="utf-8")
    assert store.poll().failed == [ref]
    assert store.get(ref) == VALUE


def test_a_file_missing_at_start_is_not_ready_and_named(tmp_path: Path) -> None:
    present = tmp_path / "present"
    present.write_text(VALUE, encoding="utf-8")
    missing = SecretRef(file=tmp_path / "absent")
    store = SecretStore([SecretRef(file=present), missing])
    assert store.get(missing) is None
    assert not store.ready()
    problems = store.problems()
    assert problems == [f"file:{tmp_path / 'absent'}: cannot read the file (No such file or directory)"]
    assert VALUE not in "".join(problems)

    (tmp_path / "absent").write_text("late", encoding="utf-8")
    assert store.poll().changed == [missing]
    assert store.ready() and store.problems() == []


def test_a_file_that_is_not_utf8_is_a_problem(tmp_path: Path) -> None:
    path = tmp_path / "binary"
    path.write_bytes(b"\xff\xfe\x00bad")
    ref = SecretRef(file=path)
    store = SecretStore([ref])
    assert store.get(ref) is None
    assert store.problems() == [f"file:{path}: cannot read the file (not UTF-8 text)"]

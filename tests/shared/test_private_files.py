"""Development data is private: folders 0700, files 0600, whether new or left by an earlier run."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from pymongo import MongoClient

from mplogin.standin import free_port, start_standin, wait_for_port
from shared.private_files import (
    open_private_append,
    private_dir,
    tighten_tree,
    write_private,
)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def loose_modes(root: Path) -> dict[str, int]:
    """Every file and folder under ``root`` (itself included) that others may access."""
    found = {}
    for path in (root, *root.rglob("*")):
        if not path.is_symlink() and mode(path) & 0o077:
            found[str(path.relative_to(root))] = mode(path)
    return found


def test_private_dir_creates_missing_parents_private_and_tightens_an_existing_one(
    tmp_path: Path,
) -> None:
    made = private_dir(tmp_path / "a" / "b" / "c")
    assert [mode(p) for p in (tmp_path / "a", tmp_path / "a" / "b", made)] == [0o700] * 3
    (tmp_path / "loose").mkdir(mode=0o777)
    os.chmod(tmp_path / "loose", 0o755)  # noqa: S103 - the looseness under test
    assert mode(private_dir(tmp_path / "loose")) == 0o700


def test_files_written_or_appended_are_0600_even_when_they_existed(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("old")
    secret.chmod(0o644)
    write_private(secret, "new")
    assert secret.read_text() == "new" and mode(secret) == 0o600
    write_private(tmp_path / "fresh" / "secret", "x")
    assert mode(tmp_path / "fresh") == 0o700 and mode(tmp_path / "fresh" / "secret") == 0o600
    log = tmp_path / "a.log"
    log.write_bytes(b"one\n")
    log.chmod(0o666)
    with open_private_append(log) as handle:
        handle.write(b"two\n")
    assert log.read_bytes() == b"one\ntwo\n" and mode(log) == 0o600
    with open_private_append(tmp_path / "b.log") as handle:
        handle.write(b"x")
    assert mode(tmp_path / "b.log") == 0o600


def test_tighten_tree_removes_group_and_other_access_and_leaves_links_alone(
    tmp_path: Path,
) -> None:
    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "f").write_text("x")
    (root / "run.sh").write_text("#!/bin/sh\n")
    outside = tmp_path / "outside"
    outside.write_text("not ours")
    (root / "link").symlink_to(outside)
    for path, loose in ((root, 0o755), (root / "sub", 0o777), (root / "sub" / "f", 0o644),
                        (root / "run.sh", 0o755), (outside, 0o644)):
        path.chmod(loose)
    tighten_tree(root)
    assert loose_modes(root) == {}
    assert mode(root / "run.sh") == 0o700, "the owner's bits are kept"
    assert mode(outside) == 0o644, "a link is not followed out of the tree"


@pytest.mark.processes
def test_the_stand_in_keeps_its_data_and_logs_private_and_tightens_an_older_run(
    tmp_path: Path,
) -> None:
    data, logs = tmp_path / "mongo", tmp_path / "logs"

    def run_once() -> int:
        port = free_port()
        proc = start_standin(port, data, logs).proc
        try:
            wait_for_port(port)
            client: MongoClient[dict[str, object]] = MongoClient(f"mongodb://127.0.0.1:{port}")
            with client:
                client.db.users.insert_one({"nickname": "Bob"})
        finally:
            proc.terminate()
            proc.wait(timeout=60)  # a loaded machine may take a while to flush
        return port

    port = run_once()
    assert loose_modes(data) == {} and loose_modes(logs) == {}
    assert any(data.iterdir()) and (logs / f"nx-27017-{port}.log").exists()
    # An earlier version left everything readable by all.
    for path in (data, logs, *data.rglob("*"), *logs.rglob("*")):
        path.chmod(0o755 if path.is_dir() else 0o644)
    run_once()
    assert loose_modes(data) == {} and loose_modes(logs) == {}

"""Atomic writes: whole files or nothing, with ordinary permissions."""

from __future__ import annotations

import os

import pytest

from archspec.files import atomic_directory, atomic_write_text


def test_written_files_and_directories_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "a.txt", "hello")
        with atomic_directory(tmp_path / "out") as temp:
            (temp / "inside.txt").write_text("x")
    finally:
        os.umask(old)
    assert path.read_text() == "hello"
    assert path.stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o755


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    path = atomic_write_text(tmp_path / "a.txt", "old")

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        with atomic_directory(tmp_path / "dir") as temp:
            (temp / "partial").write_text("half")
            raise Boom
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_a_target_under_a_file_is_refused_naming_the_target(tmp_path):
    (tmp_path / "plain").write_text("x")
    target = tmp_path / "plain" / "sub" / "a.txt"
    with pytest.raises(NotADirectoryError, match="a parent of it is a file") as caught:
        atomic_write_text(target, "hello")
    assert caught.value.filename == str(target)
    with pytest.raises(NotADirectoryError) as caught:
        with atomic_directory(tmp_path / "plain" / "dir"):
            pass
    assert caught.value.filename == str(tmp_path / "plain" / "dir")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain"]


def test_a_failed_swap_puts_the_old_directory_back(tmp_path, monkeypatch):
    with atomic_directory(tmp_path / "out") as temp:
        (temp / "file").write_text("old")
    real_replace, calls = os.replace, []

    def replace_failing_the_swap(source, target):
        calls.append(target)
        if len(calls) == 2:  # 1: old -> backup, 2: new -> target
            raise OSError(5, "disk gone")
        real_replace(source, target)

    monkeypatch.setattr("archspec.files.os.replace", replace_failing_the_swap)
    with pytest.raises(OSError, match="disk gone"):
        with atomic_directory(tmp_path / "out") as temp:
            (temp / "file").write_text("new")
    assert (tmp_path / "out" / "file").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_the_current_directory_and_its_parents_are_never_replaced(tmp_path, monkeypatch):
    inside = tmp_path / "work"
    inside.mkdir()
    (inside / "notes.txt").write_text("keep")
    monkeypatch.chdir(inside)
    for target in (".", "..", str(inside)):
        with pytest.raises(OSError, match="cannot replace the current directory") as caught:
            with atomic_directory(target):
                pass
        assert caught.value.filename in (str(inside), str(tmp_path))
    assert (inside / "notes.txt").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]

"""kvcalc.output.write_output: atomic replace, devices written in place, modes, one-line errors."""

from __future__ import annotations

import errno
import os
import re
import stat
import subprocess
import sys
import threading

import pytest

from kvcalc.errors import OptionError
from kvcalc.output import write_output


@pytest.fixture
def umask():
    """Set the process umask for one test and restore it afterwards."""
    saved = os.umask(0o022)
    yield os.umask
    os.umask(saved)


@pytest.fixture
def old_file(tmp_path):
    """An existing regular file holding b"old" (mode 0o644)."""
    path = tmp_path / "out.txt"
    path.write_bytes(b"old")
    path.chmod(0o644)
    return path


def _exact(path, reason: str) -> str:
    """A ``match=`` pattern for exactly the line ``--output: PATH: REASON``."""
    return "^" + re.escape(f"--output: {path}: {reason}") + "$"


def _fail_partway(monkeypatch, exc: BaseException) -> None:
    """Make os.write write 2 bytes once, then raise ``exc``."""
    real_write = os.write
    calls = []

    def write(fd, data):
        calls.append(fd)
        if len(calls) > 1:
            raise exc
        return real_write(fd, bytes(data[:2]))

    monkeypatch.setattr(os, "write", write)


def test_new_file_is_written(tmp_path):
    write_output(b"hello", tmp_path / "new.txt")
    assert (tmp_path / "new.txt").read_bytes() == b"hello"
    assert os.listdir(tmp_path) == ["new.txt"]


def test_existing_file_is_replaced(old_file):
    write_output(b"new data", old_file)
    assert old_file.read_bytes() == b"new data"
    assert os.listdir(old_file.parent) == ["out.txt"]


def test_large_data_is_written_whole(tmp_path):
    data = bytes(range(256)) * 40_000  # 10 MB: more than one write() may take
    write_output(data, tmp_path / "big.bin")
    assert (tmp_path / "big.bin").read_bytes() == data


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EFBIG])
def test_write_error_keeps_old_file_and_removes_temp(old_file, monkeypatch, code):
    _fail_partway(monkeypatch, OSError(code, os.strerror(code)))
    with pytest.raises(OptionError, match=_exact(old_file, os.strerror(code))):
        write_output(b"new data", old_file)
    assert old_file.read_bytes() == b"old"
    assert os.listdir(old_file.parent) == ["out.txt"]


def test_exception_mid_write_keeps_old_file_and_removes_temp(old_file, monkeypatch):
    _fail_partway(monkeypatch, RuntimeError("boom"))
    with pytest.raises(RuntimeError, match="boom"):
        write_output(b"new data", old_file)
    assert old_file.read_bytes() == b"old"
    assert os.listdir(old_file.parent) == ["out.txt"]


def test_keyboard_interrupt_mid_write_keeps_old_file_and_removes_temp(old_file, monkeypatch):
    _fail_partway(monkeypatch, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        write_output(b"new data", old_file)
    assert old_file.read_bytes() == b"old"
    assert os.listdir(old_file.parent) == ["out.txt"]


def test_failed_new_file_leaves_nothing(tmp_path, monkeypatch):
    _fail_partway(monkeypatch, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    with pytest.raises(OptionError, match="No space left on device"):
        write_output(b"new data", tmp_path / "new.txt")
    assert os.listdir(tmp_path) == []


def test_dev_null_stays_a_character_device():
    write_output(b"discard me", "/dev/null")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_dev_full_error_names_path_and_reason():
    with pytest.raises(OptionError, match=_exact("/dev/full", "No space left on device")):
        write_output(b"x", "/dev/full")
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)


def test_dev_stdout_writes_to_the_open_stdout(capfd):
    write_output(b"to stdout\n", "/dev/stdout")
    assert capfd.readouterr().out == "to stdout\n"


def test_fifo_is_written_not_replaced(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    write_output(b"through the pipe", fifo)
    reader.join(timeout=10)
    assert received == [b"through the pipe"]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_symlink_is_kept_and_its_target_replaced(old_file):
    link = old_file.parent / "link.txt"
    link.symlink_to(old_file.name)
    write_output(b"via link", link)
    assert link.is_symlink()
    assert old_file.read_bytes() == b"via link"


def test_input_is_refused(old_file):
    reason = "is an input of this command; refusing to overwrite it"
    with pytest.raises(OptionError, match=_exact(old_file, reason)):
        write_output(b"new", old_file, inputs=[old_file.parent / "other.yaml", old_file])
    assert old_file.read_bytes() == b"old"


def test_input_reached_through_a_hard_link_is_refused(old_file):
    alias = old_file.parent / "alias.txt"
    os.link(old_file, alias)
    with pytest.raises(OptionError, match="is an input of this command"):
        write_output(b"new", alias, inputs=[old_file])
    assert old_file.read_bytes() == b"old"


@pytest.mark.parametrize("mode", [0o444, 0o400, 0o000])
def test_read_only_file_is_refused(old_file, mode):
    old_file.chmod(mode)
    with pytest.raises(OptionError, match=_exact(old_file, "the file is read-only; not writing it")):
        write_output(b"new", old_file)
    old_file.chmod(0o644)
    assert old_file.read_bytes() == b"old"


def test_directory_target_is_refused(tmp_path):
    with pytest.raises(OptionError, match=_exact(tmp_path, "Is a directory")):
        write_output(b"x", tmp_path)


def test_missing_folder_is_refused(tmp_path):
    target = tmp_path / "missing" / "out.txt"
    reason = f"cannot create a file in {target.parent}: No such file or directory"
    with pytest.raises(OptionError, match=_exact(target, reason)):
        write_output(b"x", target)


def test_parent_that_is_a_file_is_refused(old_file):
    target = old_file / "out.txt"
    with pytest.raises(OptionError, match=_exact(target, "Not a directory")):
        write_output(b"x", target)


def test_unwritable_folder_is_refused():
    pattern = r"^--output: /proc/kvcalc-test\.txt: cannot create a file in /proc: \w"
    with pytest.raises(OptionError, match=pattern):
        write_output(b"x", "/proc/kvcalc-test.txt")


@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o077, 0o600)])
def test_new_file_mode_follows_umask(tmp_path, umask, mask, expected):
    umask(mask)
    write_output(b"x", tmp_path / "new.txt")
    assert stat.S_IMODE(os.stat(tmp_path / "new.txt").st_mode) == expected


def test_existing_file_keeps_its_mode(old_file, umask):
    old_file.chmod(0o640)
    umask(0o077)
    write_output(b"new", old_file)
    assert stat.S_IMODE(os.stat(old_file).st_mode) == 0o640


def test_nothing_is_printed(tmp_path, capfd):
    write_output(b"quiet", tmp_path / "new.txt")
    assert capfd.readouterr() == ("", "")


def test_import_is_lean():
    code = "import sys, kvcalc.output; print(sorted({'tempfile', 'typer', 'rich'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"

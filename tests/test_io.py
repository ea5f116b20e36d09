"""utils/io.py: atomic writes with the ordinary file mode, a full disk reported as such; utils/errors.py."""
import errno
import os
import stat

import pytest

from utils.errors import DiskFullError, UserError, exit_on_user_error
from utils.io import atomic_write


def test_atomic_write_gives_the_umask_mode_and_replaces(tmp_path):
    path = tmp_path / "a.json"
    old = os.umask(0o022)
    try:
        atomic_write(str(path), lambda f: f.write("one"), binary=False)
        atomic_write(str(path), lambda f: f.write(b"two"))
    finally:
        os.umask(old)
    assert path.read_text() == "two"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert sorted(os.listdir(tmp_path)) == ["a.json"]          # no temporary file left


def test_full_disk_keeps_the_previous_file(tmp_path):
    path = tmp_path / "last.pth"
    path.write_bytes(b"previous")

    def full(f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(DiskFullError, match=r"no space left .*last\.pth; the previous file is intact"):
        atomic_write(str(path), full)
    assert path.read_bytes() == b"previous"
    assert sorted(os.listdir(tmp_path)) == ["last.pth"]


def test_exit_on_user_error_is_one_line_and_status_2(capsys):
    def bad():
        raise DiskFullError("no space left on the device while writing x")

    with pytest.raises(SystemExit) as exit_info:
        exit_on_user_error(bad)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: no space left on the device while writing x\n"
    with pytest.raises(KeyError):                               # an internal error keeps its traceback
        exit_on_user_error(lambda: {}["x"])
    assert issubclass(DiskFullError, UserError)


def test_config_and_log_rows_on_a_full_disk(tmp_path, monkeypatch):
    from utils import logger
    from utils.config import save_config
    save_config({"a": 1.0}, str(tmp_path / "config.yaml"))
    log = logger.JsonlWriter(str(tmp_path / "log.jsonl"))
    log.write({"step": 1})

    def no_room(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_room)
    with pytest.raises(DiskFullError, match=r"config\.yaml; the previous file is intact"):
        save_config({"a": 2.0}, str(tmp_path / "config.yaml"))
    monkeypatch.setattr("builtins.open", no_room)
    with pytest.raises(DiskFullError, match=r"appending to .*log\.jsonl"):
        log.write({"step": 2})
    monkeypatch.undo()
    assert (tmp_path / "config.yaml").read_text() == "a: 1.0\n"
    assert (tmp_path / "log.jsonl").read_text() == '{"step": 1}\n'

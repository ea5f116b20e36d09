"""Saving checkpoints and run logs (issue 12 item 4, issue 14 items 2 and 6): the file mode of a checkpoint, a full
disk during a save, the world size stored in last.pth, and log.jsonl without the rows of steps a resumed run redoes.
"""
import dataclasses
import errno
import json
import os

import pytest
import torch

from utils.checkpoint import TrainState, atomic_torch_save, checkpoint_payload, resume, saved_world_size, stale_reasons
from utils.config import load_config
from utils.errors import DiskFullError
from utils.logger import JsonlWriter, RunLog
from utils.loop import save_state


def _objects(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    return model, opt, torch.amp.GradScaler("cpu", enabled=False)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_checkpoints_get_the_ordinary_file_mode(tmp_path, umask_022):
    model, opt, scaler = _objects()
    save_state(tmp_path / "last.pth", model, opt, scaler, load_config("configs/debug.yaml"), TrainState())
    atomic_torch_save(checkpoint_payload(model=model), tmp_path / "other.pth")
    for name in ("last.pth", "other.pth"):
        assert os.stat(tmp_path / name).st_mode & 0o777 == 0o644, name


class _SmallDisk:
    """A file object that accepts ``room`` bytes, then fails every write with ENOSPC, as a full disk does."""

    def __init__(self, f, room):
        self.f, self.room = f, room

    def write(self, data):
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def _fill_disk_after(monkeypatch, room):
    real = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda *a, **k: _SmallDisk(real(*a, **k), room))


def test_full_disk_during_a_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    cfg = load_config("configs/debug.yaml")
    model, opt, scaler = _objects()
    path = tmp_path / "last.pth"
    save_state(path, model, opt, scaler, cfg, TrainState(epoch=1, global_step=4, best_metric=0.5))
    before = path.read_bytes()
    trained, opt2, _ = _objects(seed=1)
    _fill_disk_after(monkeypatch, room=2000)
    with pytest.raises(DiskFullError) as full:
        save_state(path, trained, opt2, scaler, cfg, TrainState(epoch=2, global_step=8))
    message = str(full.value)
    assert message.startswith(f"no space left on the device while writing checkpoint {path}")
    assert "the previous checkpoint is intact" in message and "\n" not in message
    assert sorted(os.listdir(tmp_path)) == ["last.pth"]  # no temporary file left behind
    assert path.read_bytes() == before
    monkeypatch.undo()
    fresh, fresh_opt, _ = _objects(seed=2)
    assert resume(tmp_path, fresh, fresh_opt, scaler, cfg) == TrainState(epoch=1, global_step=4, best_metric=0.5)
    assert torch.equal(fresh.weight, model.weight)

    _fill_disk_after(monkeypatch, room=2000)
    with pytest.raises(DiskFullError, match="no checkpoint was written"):
        atomic_torch_save(checkpoint_payload(model=model), tmp_path / "new.pth")
    assert sorted(os.listdir(tmp_path)) == ["last.pth"]


def test_last_pth_stores_its_world_size(tmp_path):
    cfg = load_config("configs/debug.yaml", ["train.batch_size=32", "train.accum_steps=1"])
    model, opt, scaler = _objects()
    save_state(tmp_path / "last.pth", model, opt, scaler, cfg, TrainState())
    saved = torch.load(tmp_path / "last.pth", weights_only=True)
    fields = {f.name for f in dataclasses.fields(TrainState)}
    assert set(saved) == {"model", "optimizer", "scaler", "config", "identity", "rng", "world_size", "git"} | fields
    assert saved["world_size"] == 1 and len(saved["rng"]) == 1
    rng = saved["rng"][0]
    assert saved_world_size({"rng": [rng] * 8}) == 8  # a checkpoint from before the key: one RNG state per rank
    assert saved_world_size({"rng": rng}) == 1
    assert saved_world_size({"world_size": 8, "rng": [rng]}) == 8  # the stored value wins
    # 8 processes x 32 continue as 1 process x 32 x accum 8 (the same global batch), not as 1 x 32 x accum 4
    eight = dict(saved, world_size=8)
    assert stale_reasons(eight, load_config("configs/debug.yaml", ["train.batch_size=32",
                                                                    "train.accum_steps=8"])) == {}
    assert set(stale_reasons(eight, load_config("configs/debug.yaml", ["train.batch_size=32",
                                                                        "train.accum_steps=4"]))) \
        == {"train.accum_steps"}


def test_jsonl_drops_the_rows_a_resumed_run_redoes(tmp_path):
    path = tmp_path / "log.jsonl"
    writer = JsonlWriter(str(path))
    for step in range(1, 6):
        writer.write({"global_step": step, "train/loss": float(step)})
    writer.write({"note": "a row without a step"})
    with open(path, "a") as f:
        f.write('{"global_step": 6, "train/lo')  # cut short by a kill
    writer.drop_after(3)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows == [{"global_step": 1, "train/loss": 1.0}, {"global_step": 2, "train/loss": 2.0},
                    {"global_step": 3, "train/loss": 3.0}, {"note": "a row without a step"}]
    writer.write({"global_step": 4, "train/loss": 4.5})
    assert json.loads(path.read_text().splitlines()[-1]) == {"global_step": 4, "train/loss": 4.5}
    JsonlWriter(str(path), enabled=False).drop_after(0)  # other ranks leave the file alone
    assert len(path.read_text().splitlines()) == 5


def test_run_log_starts_at_the_resumed_step(tmp_path):
    log = RunLog(str(tmp_path), enabled=True)
    for step in (1, 2, 3):
        log.write({"global_step": step, "epoch": 0, "train/loss": 0.5, "lr": 1e-3})
    log.close()
    resumed = RunLog(str(tmp_path), enabled=True, resumed_step=1)
    resumed.write({"global_step": 2, "epoch": 0, "train/loss": 0.25, "lr": 1e-3})
    resumed.close()
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [(r["global_step"], r["train/loss"]) for r in rows] == [(1, 0.5), (2, 0.25)]
    assert os.listdir(tmp_path / "tb")

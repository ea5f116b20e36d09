"""utils/safe_load.py and its users: every refused checkpoint (missing, empty, truncated, not a checkpoint, a
TorchScript archive, pickled code, foreign objects) is a one-line error naming the path and the reason, through
``load_weights_only``, ``load_with_stand_ins``, ``utils.checkpoint.load_checkpoint`` (train.py / test.py),
``inference.loading.read_checkpoint`` (infer.py) and ``models.pretrained`` (a METER checkpoint); a pickle that would
run a command never runs it. A readable file that is not a checkpoint of train.py, and one whose parameters do not fit
the model, are one-line ``CheckpointError``s of ``utils.checkpoint`` too.
"""
import os
import subprocess
import sys

import pytest
import torch
import yaml

from inference.loading import read_checkpoint
from models.pretrained_load import load_pretrained
from tests.conftest import ROOT
from tests.test_backbone import TINY_CFA, TINY_HIDDEN, TINY_TEXT, TINY_VIT
from utils.checkpoint import (
    NotACheckpointError,
    ShapeMismatchError,
    atomic_torch_save,
    checkpoint_payload,
    load_checkpoint,
)
from utils.errors import CheckpointError, MissingDataError
from utils.safe_load import is_code_global, load_weights_only, load_with_stand_ins


class RunsCommand:
    """Pickles as a call of ``os.system(command)`` (``posix.system`` on Linux)."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class Foreign:
    """A class of this test module: not a tensor or a plain container."""


def _meter_reader(path):
    load_pretrained(None, {"meter": str(path), "pos_embed_source": "meter"})


READERS = {
    "load_weights_only": load_weights_only,
    "load_with_stand_ins": load_with_stand_ins,
    "load_checkpoint": lambda p: load_checkpoint(str(p), restore_rng=False),
    "read_checkpoint": lambda p: read_checkpoint(str(p)),
    "pretrained.meter": _meter_reader,
}


def _plain(tmp_path, legacy=False):
    path = tmp_path / ("plain_legacy.pth" if legacy else "plain.pth")
    torch.save({"model": {"w": torch.randn(64, 64)}, "epoch": 3}, path, _use_new_zipfile_serialization=not legacy)
    return path


def _bad_file(tmp_path, kind):
    """A file of ``kind`` and the words its refusal must contain."""
    path = tmp_path / f"{kind}.pth"
    if kind == "empty":
        path.write_bytes(b"")
        return path, "is empty (0 bytes)"
    if kind in ("truncated", "truncated_legacy"):
        data = _plain(tmp_path, legacy=kind == "truncated_legacy").read_bytes()
        path.write_bytes(data[:len(data) // 2])
        return path, "truncated"
    if kind == "text":
        path.write_text("model weights will go here\n")
        return path, "is not a torch checkpoint: it is a text file"
    if kind == "jpeg":
        path.write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(200))
        return path, "is not a torch checkpoint: it is a JPEG image"
    if kind == "folder":
        path.mkdir()
        return path, "is a folder"
    assert kind == "torchscript"
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(path))
    return path, "TorchScript archive"


KINDS = ["empty", "truncated", "truncated_legacy", "text", "jpeg", "folder", "torchscript"]
CASES = [(r, k) for r in sorted(READERS) for k in KINDS]


@pytest.mark.parametrize("reader,kind", CASES)
def test_unusable_files_are_refused_with_path_and_reason(tmp_path, reader, kind):
    path, reason = _bad_file(tmp_path, kind)
    with pytest.raises(CheckpointError) as err:
        READERS[reader](path)
    message = str(err.value)
    assert str(path) in message and reason in message and "\n" not in message
    assert "weights_only=False" not in message


@pytest.mark.parametrize("reader", sorted(READERS))
@pytest.mark.parametrize("legacy", [False, True])
def test_pickled_command_is_refused_and_never_runs(tmp_path, reader, legacy):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pth"
    state = {"model": {"w": torch.ones(2)}, "config": {}, "state_dict": {"w": torch.ones(2)},
             "hook": RunsCommand(f"touch {marker}")}
    torch.save(state, path, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(CheckpointError) as err:
        READERS[reader](path)
    assert not marker.exists()
    assert str(err.value) == f"{path} contains pickled code: {os.system.__module__}.system (refused; nothing from " \
                             f"it was run)"


@pytest.mark.parametrize("reader", ["load_weights_only", "load_checkpoint", "read_checkpoint"])
def test_foreign_objects_are_refused_by_the_weights_only_readers(tmp_path, reader):
    path = tmp_path / "foreign.pth"
    torch.save({"model": {}, "config": {}, "extra": Foreign()}, path)
    with pytest.raises(CheckpointError, match=f"other than tensors and plain containers: {__name__}.Foreign"):
        READERS[reader](path)


def test_stand_ins_read_foreign_objects_inertly(tmp_path):
    path = tmp_path / "foreign.pth"
    torch.save({"state_dict": {"w": torch.arange(3)}, "extra": Foreign()}, path)
    allowed = set(torch.serialization.get_safe_globals())  # a set: torch keeps no order
    obj, info = load_with_stand_ins(path)
    assert info == {"path": "stand_ins", "stubbed": [f"{__name__}.Foreign"]}
    assert type(obj["extra"]).__qualname__ == f"{__name__}.Foreign" and not isinstance(obj["extra"], Foreign)
    assert torch.equal(obj["state_dict"]["w"], torch.arange(3))
    assert set(torch.serialization.get_safe_globals()) == allowed  # the stand-ins were allowed for that one load only


@pytest.mark.parametrize("legacy", [False, True])
def test_plain_checkpoints_still_load(tmp_path, legacy):
    path = _plain(tmp_path, legacy)
    want = torch.load(path, map_location="cpu", weights_only=True)
    got = load_weights_only(path)
    assert got["epoch"] == 3 and torch.equal(got["model"]["w"], want["model"]["w"])
    obj, info = load_with_stand_ins(path)
    assert info == {"path": "weights_only", "stubbed": []} and torch.equal(obj["model"]["w"], want["model"]["w"])


def test_missing_file_is_missing_data(tmp_path):
    with pytest.raises(MissingDataError, match="absent.pth"):
        load_weights_only(tmp_path / "absent.pth")


def test_code_globals():
    assert is_code_global("posix.system") and is_code_global("builtins.eval") and is_code_global("os.path.join")
    assert is_code_global("subprocess.Popen") and is_code_global("eval")
    assert not is_code_global("builtins.set") and not is_code_global("torch._utils._rebuild_tensor_v2")
    assert not is_code_global("pytorch_lightning.utilities.parsing.AttributeDict")
    assert not is_code_global("osmosis.Thing")


def test_cli_refuses_pickled_code_with_one_line(tmp_path):
    """``python -m models.pretrained`` on a METER checkpoint that would run a command: exit 2, one error line."""
    marker = tmp_path / "ran"
    path = tmp_path / "meter.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "callbacks": RunsCommand(f"touch {marker}")}, path)
    cfg = {"data": {"image_size": 64}, "model": {"hidden_size": TINY_HIDDEN, "vit": TINY_VIT, "text": TINY_TEXT,
                                                 "cfa": TINY_CFA}, "pretrained": {"meter": str(path)}}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([sys.executable, "-m", "models.pretrained", "--config", str(tmp_path / "tiny.yaml")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stdout == "" and not marker.exists()
    assert proc.stderr.splitlines() == [f"error: {path} contains pickled code: {os.system.__module__}.system "
                                        f"(refused; nothing from it was run)"]


NOT_CHECKPOINTS = {
    "plain_state_dict": ({"encoder.weight": torch.zeros(2, 2)}, "no 'model' entry (its keys: ['encoder.weight'])"),
    "bare_tensor": (torch.zeros(3), "it holds a Tensor, not a dict with a 'model' entry"),
    "model_not_a_dict": ({"model": torch.zeros(3)}, "its 'model' entry is a Tensor, not a state dict"),
}


@pytest.mark.parametrize("case", sorted(NOT_CHECKPOINTS))
def test_readable_file_that_is_not_a_train_checkpoint(tmp_path, case):
    content, reason = NOT_CHECKPOINTS[case]
    path = tmp_path / "weights.pth"
    torch.save(content, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(str(path), model=torch.nn.Linear(2, 2), restore_rng=False)
    assert str(err.value) == f"{path} is not a checkpoint of train.py: {reason}"
    assert isinstance(err.value, NotACheckpointError) and isinstance(err.value, KeyError)  # what callers caught


def _layers(width, n=4):
    return torch.nn.ModuleList(torch.nn.Linear(3, width) for _ in range(n))


def test_shape_mismatch_names_the_parameters_not_a_size_dump(tmp_path):
    path = atomic_torch_save(checkpoint_payload(model=_layers(2)), tmp_path / "c.pth")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(str(path), model=_layers(5), restore_rng=False)
    message = str(err.value)
    assert message.startswith(f"{path} was trained with another config: 8 parameter(s) do not fit the model built "
                              "from this config (0.weight: checkpoint (2, 3), model (5, 3); 0.bias: checkpoint (2,), "
                              "model (5,); 1.weight: ")
    assert "; ... and 3 more); use the config it was trained with" in message
    assert "size mismatch" not in message and "\n" not in message
    assert isinstance(err.value, ShapeMismatchError) and isinstance(err.value, RuntimeError)
    with pytest.raises(ShapeMismatchError, match=r"1 parameter\(s\) do not fit .*\(4.weight: not in the checkpoint"):
        load_checkpoint(str(path), model=torch.nn.ModuleList([*_layers(2), torch.nn.Linear(3, 2, bias=False)]),
                        restore_rng=False)
    small = torch.nn.ModuleList([*_layers(2, 3), torch.nn.Linear(3, 7)])  # strict=False: only the shapes count
    with pytest.raises(ShapeMismatchError, match=r"2 parameter\(s\) .*\(3.weight: checkpoint \(2, 3\), model \(7, 3\)"):
        load_checkpoint(str(path), model=small, strict=False, restore_rng=False)

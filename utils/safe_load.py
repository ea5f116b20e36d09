"""Reading ``torch.save`` files without running anything from them, and refusing the ones that cannot be read.

Two readers, both on public torch APIs only (``torch.load(weights_only=True)``, ``torch.serialization.
get_unsafe_globals_in_checkpoint`` and ``torch.serialization.safe_globals``):

- ``load_weights_only(path)``: a file that holds only tensors, numbers, strings and plain containers (the
  checkpoints train.py / pretrain.py write, plain state dicts). Any other pickled global is refused.
- ``load_with_stand_ins(path)``: a file whose pickle also names classes and functions of other packages (a
  PyTorch-Lightning checkpoint such as METER's: callbacks keyed by class objects, hyper-parameter containers). A
  static scan of the pickle lists those globals first; each is then allow-listed, for this one load, under its own
  name but bound to an inert stand-in: a ``PickleStub`` subclass that only stores what the pickle hands it, or a
  plain ``dict`` / ``list`` for the container classes named in ``CONTAINER_STAND_INS``. No module named in the file
  is imported and none of its code runs.

Both refuse, with ``CheckpointError`` naming the path and the reason: a missing or empty file, a truncated zip
archive, a file that is not a torch checkpoint (text, an image, a TorchScript archive), and a pickle that names a
global of a module that runs commands or code (``CODE_MODULES``: ``posix.system``, ``builtins.eval``, ...). Such a
file was written to run something when loaded; it is refused even though the stand-ins would keep it inert.

This module imports nothing of the project but ``utils.errors``.
"""
import os
import pickle
import pickletools
import re
import zipfile

import torch
from torch import serialization

from utils.errors import CheckpointError, MissingDataError

# Top-level modules whose functions run commands or code, or reach the file system or the network. A pickle that
# names one of their globals (outside torch's own allowlist) is refused as "pickled code".
CODE_MODULES = frozenset((
    "os", "posix", "nt", "sys", "subprocess", "builtins", "__builtin__", "importlib", "runpy", "shutil", "socket",
    "pty", "ctypes", "code", "codeop", "marshal", "pickle", "_pickle", "dill", "types", "operator", "functools",
    "webbrowser", "multiprocessing", "asyncio", "signal", "threading", "_thread", "io", "_io", "pathlib", "tempfile",
    "platform", "inspect", "pdb", "bdb", "timeit", "trace", "cProfile", "profile", "urllib", "http", "ftplib",
    "smtplib", "telnetlib", "pip", "setuptools", "numpy.testing", "torch.hub", "torch.utils.cpp_extension"))

# Dict and list subclasses of PyTorch-Lightning (and sacred, METER's config system) read as a plain dict / list:
# torch's weights-only loader fills only exact dicts and lists.
CONTAINER_STAND_INS = {
    "pytorch_lightning.utilities.parsing.AttributeDict": dict,
    "lightning_fabric.utilities.data.AttributeDict": dict,
    "lightning.fabric.utilities.data.AttributeDict": dict,
    "sacred.config.custom_containers.ReadOnlyDict": dict,
    "sacred.config.custom_containers.ReadOnlyList": list,
}

_DATA_BUILTINS = frozenset(f"builtins.{t}" for t in ("set", "frozenset", "bytearray", "bytes", "complex", "slice",
                                                      "range", "int", "float", "str", "bool", "tuple", "list", "dict"))
_ZIP_MAGIC = b"PK\x03\x04"
# what reading a damaged or foreign pickle raises (torch, the pickle machinery, the zip reader, a stand-in's limits)
_READ_ERRORS = (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, KeyError, zipfile.BadZipFile,
                AttributeError, IndexError, TypeError)


class PickleStub:
    """Inert stand-in for a global of a checkpoint's pickle; records what the pickle passes and nothing else."""

    stub_global = "?"

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        self.stub_args, self.stub_kwargs = args, kwargs

    def __setstate__(self, state):
        self.__dict__["stub_state"] = state

    def __repr__(self):
        return f"<PickleStub {self.stub_global}>"


def _stub_class(full_name):
    name = full_name.rsplit(".", 1)[-1]
    return type(name, (PickleStub,), {"stub_global": full_name, "__module__": __name__, "__qualname__": full_name})


def is_code_global(full_name):
    """True when ``module.name`` belongs to a module of ``CODE_MODULES`` (or one of its submodules), other than a
    plain data type of ``builtins`` (``builtins.set``, ...)."""
    if full_name in _DATA_BUILTINS:
        return False
    module = full_name.rsplit(".", 1)[0] if "." in full_name else "builtins"
    return any(module == m or module.startswith(m + ".") for m in CODE_MODULES)


def _describe(head):
    if head.startswith(b"\xff\xd8\xff"):
        return "a JPEG image"
    if head.startswith(b"\x89PNG"):
        return "a PNG image"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return f"a file starting with {head[:8]!r}"
    return f"a text file starting with {text[:24]!r}"


def _is_legacy_checkpoint(path):
    """True when the file starts with the pickled magic number of torch's pre-1.6 format (read, not unpickled)."""
    with open(path, "rb") as f:
        try:
            for opcode, arg, _ in pickletools.genops(f):
                if opcode.name in ("LONG1", "LONG4"):
                    return arg == serialization.MAGIC_NUMBER
                if opcode.name not in ("PROTO", "FRAME"):
                    return False
        except (ValueError, EOFError):
            return False
    return False


def _legacy_globals(path):
    """Every global named by the four pickles of a pre-1.6 checkpoint (magic, protocol, system info, object), read
    with ``pickletools`` (nothing is unpickled); a pickle that ends early is a truncated file."""
    found = set()
    with open(path, "rb") as f:
        try:
            for _ in range(4):
                for opcode, arg, _ in pickletools.genops(f):
                    if opcode.name == "GLOBAL":
                        found.add(arg.replace(" ", "."))
                    elif opcode.name == "STOP":
                        break
        except (ValueError, EOFError) as err:
            raise CheckpointError(f"checkpoint {path} is truncated or damaged (torch's pre-1.6 format; its pickle "
                                  f"cannot be read to the end: {err})") from None
    return sorted(found)


def check_file(path):
    """Raise ``MissingDataError`` / ``CheckpointError`` unless ``path`` looks like a torch checkpoint.

    Returns "zip" (torch >= 1.6 format) or "legacy".
    """
    if not os.path.exists(path):
        raise MissingDataError(f"checkpoint {path} does not exist")
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path} is a folder, not a file")
    size = os.path.getsize(path)
    if size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): its copy, download or save did not finish")
    with open(path, "rb") as f:
        head = f.read(32)
    if head.startswith(_ZIP_MAGIC):
        if not zipfile.is_zipfile(path):
            raise CheckpointError(f"checkpoint {path} is truncated: a zip archive of {size} bytes without its end "
                                  f"(central directory); its copy, download or save did not finish")
        return "zip"
    if _is_legacy_checkpoint(path):
        return "legacy"
    raise CheckpointError(f"{path} is not a torch checkpoint: it is {_describe(head)}")


def _zip_globals(path):
    """Globals of the zip checkpoint's pickle outside torch's weights-only allowlist (a static scan)."""
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
        raise CheckpointError(f"{path} is a TorchScript archive (torch.jit.save), not a checkpoint of weights")
    if not any(n.endswith("data.pkl") for n in names):
        raise CheckpointError(f"{path} is a zip archive but not a torch checkpoint (it has no data.pkl)")
    try:
        return sorted(serialization.get_unsafe_globals_in_checkpoint(path))
    except _READ_ERRORS as err:
        raise CheckpointError(f"{path} is not a readable torch checkpoint: {_first_line(err)}") from None


def _first_line(err):
    """The informative line of a torch.load error (torch's weights-only advice dropped)."""
    text = str(err)
    match = re.search(r"WeightsUnpickler error: (.*)", text)
    line = match.group(1) if match else (text.strip().splitlines() or [type(err).__name__])[0]
    return f"{type(err).__name__}: {line[:300]}"


def _code_error(path, names):
    """A CheckpointError when a global of ``names`` belongs to ``CODE_MODULES``, else None."""
    code = [n for n in names if is_code_global(n)]
    if code:
        return CheckpointError(f"{path} contains pickled code: {', '.join(code[:5])} (refused; nothing from it "
                               f"was run)")
    return None


def _refuse_code(path, names):
    error = _code_error(path, names)
    if error is not None:
        raise error


def _legacy_refusal(path, err):
    """The CheckpointError for a legacy file torch's weights-only loader refused, naming the global when it can."""
    match = re.search(r"GLOBAL (\S+)", str(err))
    if match:
        return CheckpointError(f"{path} holds pickled objects other than tensors and plain containers: "
                               f"{match.group(1)} (refused; nothing from it was run)")
    return CheckpointError(f"{path} is not a readable torch checkpoint: {_first_line(err)}")


def load_weights_only(path):
    """``torch.load(path, weights_only=True)`` on the CPU, with every refusal a ``CheckpointError`` (see above)."""
    kind = check_file(path)
    if kind == "zip":
        unsafe = _zip_globals(path)
        _refuse_code(path, unsafe)
        if unsafe:
            raise CheckpointError(f"{path} holds pickled objects other than tensors and plain containers: "
                                  f"{', '.join(unsafe[:5])} (refused; nothing from it was run)")
    else:
        _refuse_code(path, _legacy_globals(path))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except _READ_ERRORS as err:
        if kind == "legacy":
            raise _legacy_refusal(path, err) from None
        raise CheckpointError(f"{path} is not a readable torch checkpoint: {_first_line(err)}") from None


def load_with_stand_ins(path):
    """Read ``path`` with stand-ins for the globals torch does not allow; returns (obj, info).

    info = {"path": "weights_only" | "stand_ins", "stubbed": [the globals that got a stand-in]}. A legacy
    (pre-1.6) file has no static scan and is read with ``load_weights_only``.
    """
    if check_file(path) == "legacy":
        return load_weights_only(path), {"path": "weights_only", "stubbed": []}
    unsafe = _zip_globals(path)
    _refuse_code(path, unsafe)
    if not unsafe:
        return load_weights_only(path), {"path": "weights_only", "stubbed": []}
    stand_ins = [(CONTAINER_STAND_INS.get(name) or _stub_class(name), name) for name in unsafe]
    try:
        with serialization.safe_globals(stand_ins):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except _READ_ERRORS as err:
        raise CheckpointError(f"{path} holds a pickled object that only its own code could rebuild "
                              f"({_first_line(err)}); the stand-ins cover {', '.join(unsafe[:5])}. If it is a dict "
                              f"or list subclass, add it to utils/safe_load.CONTAINER_STAND_INS") from None
    return obj, {"path": "stand_ins", "stubbed": unsafe}

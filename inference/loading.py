"""A trained CIEC checkpoint, ready for inference: its config, tokenizer, stop-word list and model, with checks.

``load_for_inference(path, device=None, tokenizer=None)`` -> ``Predictor`` with
    cfg        the checkpoint's resolved config (``config`` entry; merged over today's DEFAULTS, so an option added
               to the code after the checkpoint was written takes its default, which reproduces the old behaviour)
    model      ``build_model(cfg)`` with the checkpoint's weights (strict), in eval mode, on ``device``
    device     torch.device; ``None`` picks CUDA when there is a GPU, else the CPU
    tokenizer  the folder of the config's ``data.tokenizer`` (or ``tokenizer``), checked against the model
    stopwords  the word set of ``data.stopwords`` (the list the stop-word cache of training was made with)
    transform  the evaluation transform (resize to data.image_size, CLIP mean/std), ``draft_size`` as the dataset's
    meta       {"checkpoint", "epoch", "global_step", "git"} of the checkpoint
The file is read once, with ``utils.safe_load.load_weights_only`` (``torch.load(weights_only=True)`` after a static
scan of its pickle; nothing from the file runs).

Refusals, each a one-line ``error:`` and exit status 2 through ``utils.errors.exit_on_user_error``: no file
(``MissingDataError``); a folder, an empty, truncated or foreign file (text, an image), or one whose pickle names
code or other objects than tensors and plain containers (``CheckpointError``, naming the path and the reason); a
file without ``model`` and ``config`` entries (a METER export, a tokenizer file), or whose weights are not the CIEC
of its own config (``BadInputError``); a missing tokenizer folder (``MissingDataError``); a tokenizer with more
tokens than the text encoder's table, or another folder than the one the checkpoint was trained with
(``identity.tokenizer_sha256``, which train.py writes into best.pth; for a checkpoint without it, last.pth: a folder
other than the config's ``data.tokenizer`` whose files differ from it, or that cannot be compared because
``data.tokenizer`` is not there) (``BadInputError``); ``device="cuda"`` without a GPU (``BadInputError``).
"""
import os
from types import SimpleNamespace

import torch

from datasets.text import check_tokenizer_fits, load_stopwords, load_tokenizer
from datasets.transforms import build_transform
from models import build_model
from utils.config import DEFAULTS, merge
from utils.loop import file_sha256
from utils.paths import BadInputError, require
from utils.safe_load import load_weights_only


def resolve_device(name=None):
    """``None`` -> CUDA if available else CPU; ``"cuda"`` without a GPU is a ``BadInputError``."""
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BadInputError(f"--device {name} was asked for but torch sees no CUDA device here (torch "
                            f"{torch.__version__}, CUDA build {torch.version.cuda}); use --device cpu")
    return torch.device(name)


def read_checkpoint(path):
    """The checkpoint dict (weights_only) and its config merged over DEFAULTS; refuses non-CIEC files."""
    require(path, "checkpoint", "give the best.pth (or last.pth) that train.py wrote, e.g. output/demo/best.pth "
            "after scripts/demo.sh")
    state = load_weights_only(path)
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict) or \
            not isinstance(state.get("config"), dict):
        keys = sorted(state)[:8] if isinstance(state, dict) else type(state).__name__
        raise BadInputError(f"{path} is not a CIEC checkpoint: it has no 'model' and 'config' entries (it holds "
                            f"{keys}); give the best.pth that train.py wrote")
    try:
        cfg = merge(DEFAULTS, state["config"])
    except (KeyError, TypeError, ValueError) as err:
        raise BadInputError(f"{path}: its config does not fit this code ({err})") from None
    return state, cfg


def load_checked_tokenizer(cfg, state, folder=None):
    """The tokenizer of ``folder`` (default data.tokenizer of the checkpoint's config), refused when it does not
    fit the model's tables or is not the one the checkpoint was trained with."""
    folder = folder or cfg["data"]["tokenizer"]
    require(folder, "tokenizer folder", "the checkpoint's config names it (data.tokenizer, relative to the working "
            "directory: run from the repository root), or pass --tokenizer DIR with the folder it was trained with")
    tokenizer = load_tokenizer(folder)
    text = cfg["model"]["text"]
    try:
        check_tokenizer_fits(tokenizer, text["vocab_size"], text["max_position_embeddings"], cfg["data"]["max_len"])
    except ValueError as err:
        raise BadInputError(f"tokenizer {folder} does not fit the checkpoint's model, which was trained with "
                            f"another tokenizer size: {err}") from None
    trained = (state.get("identity") or {}).get("tokenizer_sha256")
    if trained is None:
        check_same_tokenizer_folder(folder, cfg["data"]["tokenizer"])
    elif file_sha256(folder) != trained:
        raise BadInputError(f"tokenizer folder {folder} ({len(tokenizer)} tokens) is not the one the checkpoint "
                            f"was trained with (identity.tokenizer_sha256 {trained[:12]}... differs); pass "
                            f"--tokenizer DIR with that folder")
    return tokenizer


def check_same_tokenizer_folder(folder, configured):
    """For a checkpoint without a tokenizer fingerprint (last.pth): ``folder`` must be the config's
    ``data.tokenizer`` folder, or a copy of it (same ``file_sha256``); else ``BadInputError`` naming both."""
    if os.path.realpath(folder) == os.path.realpath(configured):
        return
    if not os.path.isdir(configured):
        raise BadInputError(f"tokenizer folder {folder} cannot be checked against the checkpoint: it has no "
                            f"tokenizer fingerprint (identity.tokenizer_sha256; last.pth has none) and its "
                            f"data.tokenizer {configured} is not there to compare with; give the run's best.pth, "
                            f"or put the tokenizer back at {configured}")
    if file_sha256(folder) != file_sha256(configured):
        raise BadInputError(f"tokenizer folder {folder} is not the checkpoint's data.tokenizer {configured} (their "
                            f"files differ; the checkpoint has no tokenizer fingerprint to decide); pass --tokenizer "
                            f"{configured} or leave --tokenizer out")


def build_checked_model(cfg, state, tokenizer, path):
    """``build_model(cfg)`` with the checkpoint's weights, strictly (else the file is not this config's CIEC)."""
    model = build_model(cfg, pad_token_id=tokenizer.pad_token_id)
    try:
        model.load_state_dict(state["model"], strict=True)
    except RuntimeError as err:
        lines = str(err).splitlines()
        raise BadInputError(f"{path} is not a CIEC checkpoint of its own config: {lines[0]} "
                            f"{' '.join(lines[1:3])[:300]}") from None
    return model.eval()


def load_for_inference(path, device=None, tokenizer=None):
    """See the module docstring."""
    device = resolve_device(device)
    state, cfg = read_checkpoint(path)
    tok = load_checked_tokenizer(cfg, state, tokenizer)
    spec = cfg["data"]["stopwords"]
    if spec != "sklearn":
        require(spec, "stop-word list", "put the word-list file the model was trained with there (data.stopwords "
                "of the checkpoint's config, relative to the working directory)")
    words, _ = load_stopwords(spec)
    model = build_checked_model(cfg, state, tok, path).to(device)
    size = cfg["data"]["image_size"]
    return SimpleNamespace(
        cfg=cfg, model=model, device=device, tokenizer=tok, stopwords=words,
        transform=build_transform(size, train=False),
        draft_size=(2 * size, 2 * size) if cfg["data"]["jpeg_draft"] else None,
        meta={"checkpoint": path, "epoch": state.get("epoch"), "global_step": state.get("global_step"),
              "git": state.get("git")})


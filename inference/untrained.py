"""A checkpoint without training, for tests and benchmarks of infer.py when no trained one is at hand.

``untrained_checkpoint(cfg, path, seed=0, patch_bias=None)`` writes ``path`` exactly as train.py writes best.pth
(``utils.loop.best_payload``: weights, config, identity with the tokenizer fingerprint, epoch / step / metric) for
``build_model(cfg)`` freshly initialised with ``seed``. ``patch_bias`` sets the TRPS patch head's bias (a large
positive value makes v_coarse > 0.5: the image is judged manipulated and a box is chosen among the candidates; a
negative one makes it judged real). Returns ``path``. Its outputs are meaningless, its cost is the trained model's.
"""
import torch

from datasets.text import tokenizer_for
from models import build_model
from utils.checkpoint import atomic_torch_save
from utils.loop import best_payload, file_sha256


def untrained_checkpoint(cfg, path, seed=0, patch_bias=None):
    tokenizer = tokenizer_for(cfg)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = build_model(cfg, pad_token_id=tokenizer.pad_token_id)
    if patch_bias is not None:
        with torch.no_grad():
            model.trps.patch_head.bias.fill_(patch_bias)
    state = {"epoch": 0, "global_step": 0, "best_metric": -1.0}
    identity = {"tokenizer_sha256": file_sha256(cfg["data"]["tokenizer"])}
    atomic_torch_save(best_payload(model, cfg, state, identity), str(path))
    return str(path)

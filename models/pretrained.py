"""``python -m models.pretrained --config CFG [--opts k=v ...]``: build the backbone, load ``cfg["pretrained"]`` into
it and print the exact key report (paper section 3.2: "pre-trained backbone weights sourced from METER").

A missing file, an unreadable or refused checkpoint (empty, truncated, not a checkpoint, pickled code), a key gap
or a bad ``pretrained.*`` setting is one ``error: ...`` line on stderr and exit status 2
(``utils.errors.exit_on_user_error``).

The work is done elsewhere, one job per module, and callers import from there: ``utils/safe_load.py`` (reading
checkpoint files without running anything from them), ``models/pretrained_keys.py`` (key mapping of METER / OpenAI
CLIP / roberta-base onto the backbone, exact key checks) and ``models/pretrained_load.py`` (loading and the key
report). This module is the command line only.
"""
import sys

from models.pretrained_load import format_key_report, load_pretrained
from utils.cli import ArgumentParser
from utils.errors import exit_on_user_error


def main(argv=None):
    """Load ``cfg["pretrained"]`` into a freshly built backbone and print the key report; returns 0."""
    parser = ArgumentParser(prog="python -m models.pretrained",
                            description="Load cfg.pretrained into the CIEC backbone and report keys.")
    parser.add_argument("--config", default=None)
    parser.add_argument("--opts", nargs="*", default=[])
    parser.add_argument("--pad-token-id", type=int, default=1)
    args = parser.parse_args(argv)
    from models.backbone import build_backbone
    from utils.config import load_config

    cfg = load_config(args.config, args.opts)
    backbone = build_backbone(cfg, pad_token_id=args.pad_token_id)
    print(format_key_report(load_pretrained(backbone, cfg["pretrained"])))
    return 0


if __name__ == "__main__":
    sys.exit(exit_on_user_error(main))

"""Where a config's data lives, and the one-line error an entry point gives when some of it is missing.

``data_paths(cfg)`` is the single place that turns ``cfg["data"]`` into paths (the preprocess scripts, test.py and
train.py all use it): ``data.root`` plus the split files, the face cache and the stop-word cache, which are
relative to it, and the tokenizer folder (relative to the working directory, like every other path of a config).

``check_inputs`` looks for what a command is about to read and raises ``MissingDataError`` naming the first
missing file or folder and what to do about it: where DGM4 goes, which preprocess command makes which cache,
which checkpoint was looked for. ``BadInputError`` is its sibling for an input that is there but unusable (infer.py:
a file that is not an image, an empty caption, a checkpoint that is not CIEC's, CUDA asked for where there is none).
``utils.errors.exit_on_user_error`` runs an entry point's ``main`` and turns these two error types, and every
other user error of ``utils.errors`` (a bad config value is a ``ConfigError``), into ``error: <message>`` on stderr
and exit status 2; every other exception keeps its traceback.
"""
import os
import shlex

from utils.config import load_config
from utils.errors import BadInputError, ConfigError, MissingDataError  # noqa: F401 (re-exported)

DEFAULT_CONFIG = "configs/ciec.yaml"
SPLITS = ("train", "val", "test")
README_HINT = "README.md, 'Reproducing the paper'"


def data_paths(cfg):
    """``{"root", "metadata": {split: [files relative to root]}, "face_cache", "stopword_cache", "tokenizer"}``
    of ``cfg["data"]``; the two caches are joined with the root."""
    d = cfg["data"]
    return {"root": d["root"], "metadata": {split: list(d[f"{split}_files"]) for split in SPLITS},
            "face_cache": os.path.join(d["root"], d["face_cache"]),
            "stopword_cache": os.path.join(d["root"], d["stopword_cache"]), "tokenizer": d["tokenizer"]}


def metadata_files(paths, splits=SPLITS):
    """The metadata files of ``splits`` (relative to the root), each once, in split order."""
    return list(dict.fromkeys(f for split in splits for f in paths["metadata"][split]))


def command(script, config=DEFAULT_CONFIG, opts=()):
    """The command line that runs ``script`` on the same config: ``python preprocess/x.py [--config C] [--opts]``."""
    words = ["python", script]
    if config != DEFAULT_CONFIG:
        words += ["--config", config]
    if opts:
        words += ["--opts", *opts]
    return " ".join(shlex.quote(w) for w in words)


def load_entry_config(path, opts=()):
    """``load_config(path, opts)``; a missing config file is a ``MissingDataError``, a bad one a ``ConfigError``."""
    if os.path.isdir(path):
        raise ConfigError(f"config file {path} is a folder: pass a YAML file with --config, such as {DEFAULT_CONFIG}")
    if not os.path.isfile(path):
        raise MissingDataError(f"config file {path} not found (paths are relative to the working directory: run "
                               f"from the repository root, or pass --config FILE)")
    return load_config(path, list(opts))


def add_config_args(parser, out_help):
    """The flags shared by the preprocess scripts: ``--config``/``--opts`` (as in train.py) and the explicit
    ``--data-root``/``--metadata``/``--out`` that override what the config says."""
    parser.add_argument("--config", default=None, help=f"config whose data.* keys give the paths of the flags "
                        f"below that are not given (default {DEFAULT_CONFIG})")
    parser.add_argument("--opts", nargs="*", default=[], help="config overrides such as data.root=/data")
    parser.add_argument("--data-root", default=None, help="folder the metadata and image paths are relative to "
                        "(default data.root)")
    parser.add_argument("--metadata", nargs="+", default=None, help="metadata JSON files relative to --data-root "
                        "(default: the config's train, val and test files)")
    parser.add_argument("--out", default=None, help=out_help)


def resolve_preprocess_args(args, cache):
    """Fill ``args.data_root``, ``args.metadata`` and ``args.out`` (``cache``: "face_cache" or "stopword_cache")
    from the config where not given; the explicit flags win, and ``--data-root`` also moves the default cache.
    The config is read only when a path is missing or ``--config``/``--opts`` is given. Returns ``args``."""
    if args.config is None and not args.opts and None not in (args.data_root, args.metadata, args.out):
        return args
    args.config = args.config or DEFAULT_CONFIG
    cfg = load_entry_config(args.config, args.opts)
    if args.data_root is not None:
        cfg["data"]["root"] = args.data_root
    paths = data_paths(cfg)
    args.data_root = paths["root"]
    args.metadata = args.metadata or metadata_files(paths)
    args.out = args.out or paths[cache]
    return args


def require_metadata(root, files):
    """Every metadata file ``root/f`` must exist; the message says where the benchmark goes."""
    for name in files:
        path = os.path.join(root, name)
        if not os.path.isfile(path):
            where = f"{root}/" if os.path.isdir(root) else f"{root}/ (which does not exist either)"
            raise MissingDataError(f"metadata file {path} not found: extract the DGM4 benchmark into {where} so "
                                   f"that {path} exists, or point data.root / --data-root at it ({README_HINT})")


def require(path, what, remedy):
    """``path`` (file or folder) must exist; else ``MissingDataError("<what> <path> not found: <remedy>")``."""
    if not os.path.exists(path):
        raise MissingDataError(f"{what} {path} not found: {remedy}")


def check_inputs(cfg, splits, config=DEFAULT_CONFIG, opts=(), checkpoint=None, pretrained=False, files=()):
    """Raise ``MissingDataError`` for the first missing input of a command that builds the ``splits`` datasets of
    ``cfg`` (and reads the metadata ``files``, relative to data.root: pretrain.py's corpus): metadata, face cache,
    stop-word cache, tokenizer, then ``checkpoint`` and (``pretrained``) the configured pretrained weights."""
    paths = data_paths(cfg)
    require_metadata(paths["root"], list(dict.fromkeys([*metadata_files(paths, splits), *files])))
    require(paths["face_cache"], "face cache", f"make it with `{command('preprocess/detect_faces.py', config, opts)}`"
            " (data.face_cache)")
    require(paths["stopword_cache"], "stop-word cache",
            f"make it with `{command('preprocess/stopword_masks.py', config, opts)}` (data.stopword_cache)")
    require(paths["tokenizer"], "tokenizer folder", "put the roberta-base tokenizer files there (data.tokenizer; "
            "checkpoints/README.md)")
    if checkpoint is not None:
        require(checkpoint, "checkpoint", "train one first with `torchrun --nproc_per_node=8 train.py --config "
                f"{config}` (it writes train.output_dir/best.pth), or pass --checkpoint FILE")
    if pretrained:
        for key in ("meter", "openai_clip", "roberta"):
            if cfg["pretrained"].get(key):
                require(cfg["pretrained"][key], "pretrained weights", f"put them there (pretrained.{key}; "
                        "checkpoints/README.md), or set it to null")


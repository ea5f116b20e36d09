"""Run a trained CIEC model on your own image-caption pair, or on a file of pairs.

    python infer.py --checkpoint output/demo/best.pth --image photo.jpg --text "CAPTION" [--out-image pic.png]
        [--out result.json] [--boxes "x1,y1,x2,y2;..."] [--device cpu|cuda] [--amp bf16|none]
    python infer.py --checkpoint output/demo/best.pth --pairs pairs.jsonl --out results.jsonl [--out-image DIR]

Everything about the model comes from the checkpoint (its config: sizes, tokenizer folder, stop-word list;
inference/loading.py). Candidate faces are found by MTCNN with the face cache's settings
(preprocess/detect_faces.py), or given with ``--boxes`` (pixels, left top right bottom; a ``"boxes"`` list per line in
batch mode). The pair is built by the dataset's own functions (inference/pairs.py) and read with the evaluator's
decision rules (inference/results.py has the JSON schema): pair / image / text p(fake) and decisions, the
manipulated face as a pixel box (or null) among the candidates with their S^v, every caption word with its p(fake)
and decision, timings. ``--out-image`` draws it (utils/visualize.py, as test.py --visualize).

One pair: the JSON goes to stdout (or ``--out``). Batch: ``--pairs`` holds one ``{"image": ..., "text": ...}`` a
line (image paths relative to that file); ``--out`` gets one JSON line per pair, in input order, each with
``input.line``; a pair that cannot be read gets ``"error"`` on its line and the run goes on. Files are written
atomically (nothing half-written on an error; one pair: the picture is renamed into place after the JSON is out).
An unusable input (missing or non-image file, empty caption, ``--out-image`` without a picture extension PIL knows,
checkpoint that is not CIEC's or whose tokenizer does not match, CUDA without a GPU) is one ``error:`` line on stderr
and exit status 2; the caption and the picture's extension are checked before the checkpoint is loaded.
"""
import json
import os
import sys
import time

from PIL import Image
from tqdm import tqdm

from inference.loading import load_for_inference
from inference.pairs import check_caption, parse_boxes, prepare_pair
from inference.results import pair_result, run_model
from preprocess import detect_faces
from utils.cli import ArgumentParser, positive_int
from utils.errors import exit_on_user_error
from utils.io import atomic_write
from utils.paths import BadInputError, MissingDataError
from utils.visualize import probability_lines, render_prediction


def parse_args(argv=None):
    """The flags (module docstring); a usage error, an empty caption or a picture type PIL cannot write is a
    ``BadInputError`` (``utils.cli.ArgumentParser``), raised before anything is loaded."""
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="best.pth (or last.pth) written by train.py")
    p.add_argument("--image", help="one image (any format PIL reads)")
    p.add_argument("--text", help="its caption")
    p.add_argument("--boxes", help='candidate faces "x1,y1,x2,y2;..." in pixels (default: MTCNN)')
    p.add_argument("--pairs", help='JSON lines {"image": ..., "text": ..., optional "boxes": [[x1,y1,x2,y2], ...]}')
    p.add_argument("--out", help="result file: JSON (one pair; default stdout) or JSON lines (--pairs; required)")
    p.add_argument("--out-image", help="picture: a PNG file (one pair) or a folder of <line>.png (--pairs)")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda if there is a GPU")
    p.add_argument("--amp", choices=["bf16", "none"], default="none", help="autocast dtype of the forward pass")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="pairs per forward pass (default eval.batch_size)")
    p.add_argument("--tokenizer", help="tokenizer folder (default: data.tokenizer of the checkpoint's config)")
    args = p.parse_args(argv)
    if (args.image is None) == (args.pairs is None):
        p.error("give either --image (with --text) or --pairs")
    if args.image is not None and args.text is None:
        p.error("--image needs --text")
    if args.pairs is not None and (args.out is None or args.text is not None or args.boxes is not None):
        p.error("--pairs needs --out, and takes captions and boxes from its lines (not --text / --boxes)")
    if args.pairs is None:
        check_single_args(p, args)
    return args


def check_single_args(parser, args):
    """One-pair flags that can be refused before the checkpoint is loaded: the caption (``check_caption``) and the
    picture's file type (an extension PIL writes), each a ``parser.error``."""
    try:
        check_caption(args.text)
    except BadInputError as err:
        parser.error(f"--text: {err}")
    if args.out_image is not None:
        ext = os.path.splitext(args.out_image)[1].lower()
        if not ext:
            parser.error(f"--out-image {args.out_image} has no file extension (give e.g. a .png file)")
        if picture_format(args.out_image) not in Image.SAVE:
            parser.error(f"--out-image {args.out_image}: PIL cannot write a {ext!r} picture (give e.g. a .png file)")


def picture_format(path):
    """PIL's format name for the extension of ``path`` (None when PIL knows no such extension)."""
    return Image.registered_extensions().get(os.path.splitext(path)[1].lower())


def write_text(path, text):
    """``text`` into ``path`` (UTF-8), atomically."""
    return atomic_write(path, lambda f: f.write(text), binary=False)


def render_pair(prep, result, path, then=None):
    """The picture of one result (candidates with S^v, the chosen box, fake words, probabilities, legend), written
    atomically; ``then()`` runs after drawing and before the rename, so its failure leaves no picture."""
    k = len(prep.boxes)
    candidates = list(zip(prep.sample["cand_boxes"][:k].tolist(), [c["score"] for c in result["candidates"]]))
    chosen = [c["chosen"] for c in result["candidates"]]
    pred_box = prep.sample["cand_boxes"][chosen.index(True)].tolist() if any(chosen) else [0, 0, 0, 0]
    info = probability_lines(result["pair"]["fake_prob"], result["image"]["fake_prob"], result["text"]["fake_prob"])
    words = [w["word"] for w in result["words"]]
    flags = [int(w["fake"]) for w in result["words"]]
    fmt = picture_format(path)

    def write(f):
        render_prediction(prep.path, words, pred_box, None, flags, None, f, candidates=candidates, info=info,
                          legend=True, fmt=fmt)
        if then is not None:
            then()
    return atomic_write(path, write)


def infer_prepared(predictor, prepared, amp):
    """Results of already prepared pairs, one forward pass; timings include the pair's share of the pass."""
    if not prepared:
        return []
    out, seconds = run_model(predictor, prepared, amp)
    results = []
    for i, prep in enumerate(prepared):
        result = pair_result(prep, out, i, predictor.cfg, predictor.stopwords)
        timings = dict(prep.timings, model_ms=1e3 * seconds / len(prepared))
        timings["total_ms"] = sum(timings.values())
        result["timings_ms"] = {k: round(v, 1) for k, v in timings.items()}
        results.append(result)
    return results


def start_detector():
    """Start MTCNN once, before the pairs (``prepare_pair`` would start it at the first pair; this keeps the progress
    bar's rate steady and reports the start-up time)."""
    t0 = time.perf_counter()
    detect_faces.init_detector()
    print(f"[infer] MTCNN ready in {time.perf_counter() - t0:.1f} s", file=sys.stderr)


def run_single(predictor, args):
    """One pair: its result as JSON (``--out`` or stdout) and, with ``--out-image``, its picture."""
    boxes = None if args.boxes is None else parse_boxes(args.boxes)
    prep = prepare_pair(predictor, args.image, args.text, boxes)
    result = {"input": {"image": args.image, "text": args.text}, **infer_prepared(predictor, [prep], args.amp)[0]}
    write_single(prep, result, args)
    return [result]


def write_single(prep, result, args):
    """The JSON, then the picture: the picture is drawn into a temporary file first and renamed only once the JSON
    is out, so that a failure at either step leaves neither file."""
    text = json.dumps(result, indent=1, allow_nan=False)

    def emit_json():
        if args.out:
            write_text(args.out, text + "\n")
        else:
            print(text)

    if args.out_image:
        render_pair(prep, result, args.out_image, then=emit_json)
    else:
        emit_json()


def read_pairs(path):
    """Input lines of a pairs file -> [{"line", "image", "text", "boxes", "path"} or {"line", "error"}]."""
    if not os.path.isfile(path):
        raise MissingDataError(f"pairs file {path} not found (one JSON object {{\"image\": ..., \"text\": ...}} "
                               f"a line; image paths relative to the file)")
    base, items = os.path.dirname(os.path.abspath(path)), []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as err:
                items.append({"line": n, "error": f"line is not JSON ({err})"})
                continue
            if not isinstance(item, dict) or not isinstance(item.get("image"), str) or "text" not in item:
                items.append({"line": n, "error": 'line must be a JSON object with "image" (a path) and "text"'})
                continue
            items.append({"line": n, "image": item["image"], "text": item["text"], "boxes": item.get("boxes"),
                          "path": os.path.join(base, item["image"])})
    return items


def _prepare_or_error(predictor, item):
    """(prepared pair, None) or (None, reason) for one input line."""
    if "error" in item:
        return None, item["error"]
    try:
        return prepare_pair(predictor, item["path"], item["text"], item["boxes"]), None
    except BadInputError as err:
        return None, str(err)


def infer_chunk(predictor, items, amp):
    """One output row per input item, in order: the result, or the reason it could not be read."""
    prepared = [_prepare_or_error(predictor, item) for item in items]
    results = iter(infer_prepared(predictor, [p for p, _ in prepared if p is not None], amp))
    rows = []
    for item, (prep, error) in zip(items, prepared):
        head = {"input": {k: item[k] for k in ("line", "image", "text") if k in item}}
        rows.append((prep, {**head, "error": error} if error else {**head, **next(results)}))
    return rows


def run_batch(predictor, args):
    """Batch mode; returns the rows written (also used by bench/infer_speed.py)."""
    items = read_pairs(args.pairs)
    if any("error" not in item and item["boxes"] is None for item in items):
        start_detector()
    size = args.batch_size or predictor.cfg["eval"]["batch_size"]
    rows = []
    with tqdm(total=len(items), desc="pairs", unit="pair", dynamic_ncols=True) as bar:
        for start in range(0, len(items), size):
            for prep, row in infer_chunk(predictor, items[start:start + size], args.amp):
                if prep is not None and args.out_image:
                    render_pair(prep, row, os.path.join(args.out_image, f"{row['input']['line']}.png"))
                rows.append(row)
                bar.update(1)
    write_text(args.out, "".join(json.dumps(row, allow_nan=False) + "\n" for row in rows))
    return rows


def main(args):
    start = time.perf_counter()
    predictor = load_for_inference(args.checkpoint, args.device, args.tokenizer)
    meta = predictor.meta
    print(f"[infer] {meta['checkpoint']} (epoch {meta['epoch']}, global step {meta['global_step']}) on "
          f"{predictor.device}, amp {args.amp}; loaded in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    rows = run_single(predictor, args) if args.pairs is None else run_batch(predictor, args)
    errors = sum("error" in row for row in rows)
    print(f"[infer] {len(rows) - errors} pair(s) done, {errors} could not be read, in "
          f"{time.perf_counter() - start:.1f} s" + (f"; wrote {args.out}" if args.out else ""), file=sys.stderr)
    return rows


if __name__ == "__main__":
    exit_on_user_error(lambda: main(parse_args()))  # a bad flag or unusable input: one `error:` line

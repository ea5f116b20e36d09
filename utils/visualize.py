"""Figure-3-style prediction pictures (CIEC paper Fig. 3): image with boxes, caption with marked words.

``render_prediction(image, caption_words, pred_box, gt_box, token_pred_words, token_true_words, out_path)``
- ``image``: a path or a PIL image (any size; shown at ``width`` pixels, aspect kept);
- ``caption_words``: list of words (or a caption string, split on whitespace);
- ``pred_box`` / ``gt_box``: normalised cxcywh (4,); an all-zero box ("no manipulated region") is not drawn;
  predicted box in RED, true box in GREEN;
- ``token_pred_words`` / ``token_true_words``: 0/1 flags, one per word (``word_flags_from_tokens`` turns
  per-token flags into per-word flags). A predicted word is written in RED, a true fake word is UNDERLINED in
  GREEN (a correctly found word is red and underlined; a missed one black and underlined).
Writes a PNG/JPEG at ``out_path`` and returns the path.

``render_figure3(dataset, prediction, out_path)`` draws one ``predictions.jsonl`` record of a ``DGM4Dataset``
sample: the original image (``dataset.root`` + record path), the normalised caption, predicted words = words with
a predicted fake token (tokens mapped to whitespace words by character offsets, ``datasets.text.token_words``),
true words = the record's ``fake_text_pos`` mapped onto the normalised words (``align_words``' owners).
``render_predictions(dataset, predictions, n, out_dir)`` renders the first ``n`` manipulated samples
(``test.py --visualize N``).
"""
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from datasets.text import align_words, encode, token_words
from utils.box_ops import norm_cxcywh_to_pixel_xyxy

RED, GREEN, BLACK, WHITE = (220, 20, 20), (20, 170, 20), (0, 0, 0), (255, 255, 255)


def word_flags_from_tokens(token_flags, word_ids, num_words):
    """Per-word 0/1 flags: a word is flagged when any of its tokens is. ``word_ids[i]`` is None for specials."""
    flags = np.zeros(num_words, dtype=np.int64)
    for flag, word in zip(token_flags, word_ids):
        if word is not None and 0 <= word < num_words and flag == 1:
            flags[word] = 1
    return flags.tolist()


def _draw_box(draw, box, size, color, width):
    box = np.asarray(box, dtype=np.float64)
    if not np.any(np.abs(box) > 1e-4):
        return
    x1, y1, x2, y2 = norm_cxcywh_to_pixel_xyxy(box, size[0], size[1]).tolist()
    draw.rectangle([min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)], outline=color, width=width)


def _layout(draw, words, font, max_width, margin):
    """(x, y, word index) positions of the caption words, wrapped at ``max_width``."""
    space = draw.textlength(" ", font=font)
    line_h = font.size + 8 if hasattr(font, "size") else 20
    x, y, spots = margin, margin, []
    for i, word in enumerate(words):
        w = draw.textlength(word, font=font)
        if x > margin and x + w > max_width - margin:
            x, y = margin, y + line_h
        spots.append((x, y, w))
        x += w + space
    return spots, y + line_h + margin, line_h


def render_prediction(image, caption_words, pred_box, gt_box, token_pred_words, token_true_words, out_path,
                      width=512, font_size=18):
    """Draw the picture described in the module docstring and save it to ``out_path``."""
    img = Image.open(image).convert("RGB") if isinstance(image, (str, os.PathLike)) else image.convert("RGB")
    img = img.resize((width, max(1, round(img.height * width / img.width))), Image.BICUBIC)
    draw = ImageDraw.Draw(img)
    _draw_box(draw, gt_box, img.size, GREEN, 3)
    _draw_box(draw, pred_box, img.size, RED, 3)
    words = caption_words.split() if isinstance(caption_words, str) else list(caption_words)
    pred = list(token_pred_words) + [0] * (len(words) - len(token_pred_words))
    true = list(token_true_words) + [0] * (len(words) - len(token_true_words))
    font = ImageFont.load_default(size=font_size)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    spots, text_h, line_h = _layout(probe, words, font, width, 10)
    canvas = Image.new("RGB", (width, img.height + text_h), WHITE)
    canvas.paste(img, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for word, (x, y, w), p, t in zip(words, spots, pred, true):
        y += img.height
        draw.text((x, y), word, fill=RED if p else BLACK, font=font)
        if t:
            draw.line([(x, y + line_h - 5), (x + w, y + line_h - 5)], fill=GREEN, width=2)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    canvas.save(out_path)
    return out_path


def _sample_words(dataset, prediction):
    """(image path, words, predicted word flags, true word flags) of one prediction record."""
    rec = dataset.records[prediction["index"]]
    if str(rec["id"]) != str(prediction["id"]):
        raise ValueError(f"prediction for id {prediction['id']} does not match dataset record {rec['id']} "
                         f"(index {prediction['index']}, file {rec.get('_file', '?')})")
    caption, spans, owner = align_words(rec["text"], dataset.max_words)
    enc = encode(dataset.tokenizer, caption, dataset.max_len)
    words_of_token = token_words(enc, spans, len(caption))[1:]  # predictions start after <s>
    pred = word_flags_from_tokens(prediction["token_pred"], words_of_token, len(spans))
    fake_raw = {int(i) for i in rec["fake_text_pos"]}
    true = [int(o in fake_raw) for o in owner]
    words = [caption[s:e] for s, e in spans]
    return os.path.join(dataset.root, rec["image"]), words, pred, true


def render_figure3(dataset, prediction, out_path):
    """Render one prediction record (see the module docstring) to ``out_path``."""
    image_path, words, pred, true = _sample_words(dataset, prediction)
    return render_prediction(image_path, words, prediction["pred_box"], prediction["gt_box"], pred, true, out_path)


def render_predictions(dataset, predictions, n, out_dir):
    """Render the first ``n`` manipulated samples of ``predictions`` into ``out_dir/<id>.png``; return the paths."""
    chosen = [p for p in predictions if p["fake_cls"] != "orig"][:n]
    return [render_figure3(dataset, p, os.path.join(out_dir, f"{p['id']}.png")) for p in chosen]

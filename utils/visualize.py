"""Figure-3-style prediction pictures (CIEC paper Fig. 3): image with boxes, caption with marked words.

``render_prediction(image, caption_words, pred_box, gt_box, token_pred_words, token_true_words, out_path,
candidates=(), info=(), legend=False)``
- ``image``: a path or a PIL image (any size; shown at ``width`` pixels, aspect kept);
- ``caption_words``: list of words (or a caption string, split on whitespace);
- ``pred_box`` / ``gt_box``: normalised cxcywh (4,); an all-zero box ("no manipulated region") is not drawn;
  predicted box in RED, true box in GREEN; ``gt_box=None``: no ground truth (infer.py);
- ``token_pred_words`` / ``token_true_words``: 0/1 flags, one per word (``word_flags_from_tokens`` turns
  per-token flags into per-word flags). A predicted word is written in RED, a true fake word is UNDERLINED in
  GREEN (a correctly found word is red and underlined; a missed one black and underlined); ``None``: no truth;
- ``candidates``: ``[(normalised cxcywh box, S^v score), ...]``, drawn in ORANGE with the score at the top left;
- ``info``: lines written between the image and the caption (the pair / image / text probabilities);
- ``legend``: a key under the caption saying which colour is what (truth entries only when truth is given).
Writes a PNG/JPEG at ``out_path`` and returns the path.

``probability_lines(pair, image, text, label=None)`` is the ``info`` line. infer.py draws its pictures with
``render_prediction``; test.py --visualize through ``inference/figures.py``, which maps a dataset sample and its
prediction record onto words (``utils/`` is a leaf: nothing in it imports the rest of the project).
"""
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from utils.box_ops import norm_cxcywh_to_pixel_xyxy

RED, GREEN, BLACK, WHITE = (220, 20, 20), (20, 170, 20), (0, 0, 0), (255, 255, 255)
ORANGE = (245, 150, 20)


def word_flags_from_tokens(token_flags, word_ids, num_words):
    """Per-word 0/1 flags: a word is flagged when any of its tokens is. ``word_ids[i]`` is None for specials."""
    flags = np.zeros(num_words, dtype=np.int64)
    for flag, word in zip(token_flags, word_ids):
        if word is not None and 0 <= word < num_words and flag == 1:
            flags[word] = 1
    return flags.tolist()


def _draw_box(draw, box, size, color, width):
    """Outline of a normalised cxcywh box; returns its pixel (x1, y1) corner, or None for a zero box."""
    box = np.asarray(box, dtype=np.float64)
    if not np.any(np.abs(box) > 1e-4):
        return None
    x1, y1, x2, y2 = norm_cxcywh_to_pixel_xyxy(box, size[0], size[1]).tolist()
    draw.rectangle([min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)], outline=color, width=width)
    return min(x1, x2), min(y1, y2)


def _draw_boxes(img, candidates, pred_box, gt_box, font):
    """Candidates (ORANGE, with their score), the true box (GREEN), the predicted box (RED, on top)."""
    draw = ImageDraw.Draw(img)
    for box, score in candidates:
        corner = _draw_box(draw, box, img.size, ORANGE, 2)
        if corner is not None:
            label = f"{score:.2f}"
            x, y = corner[0], max(0, corner[1] - font.size - 4)
            draw.rectangle([x, y, x + draw.textlength(label, font=font) + 4, y + font.size + 4], fill=ORANGE)
            draw.text((x + 2, y + 2), label, fill=BLACK, font=font)
    if gt_box is not None:
        _draw_box(draw, gt_box, img.size, GREEN, 3)
    _draw_box(draw, pred_box, img.size, RED, 3)


def _flow(widths, max_width, margin, top, line_h):
    """(x, y) positions of items of the given widths, left to right from ``top``, wrapped at ``max_width``;
    returns the positions and the y below the last line."""
    x, y, spots = margin, top, []
    for w in widths:
        if x > margin and x + w > max_width - margin:
            x, y = margin, y + line_h
        spots.append((x, y))
        x += w + 12
    return spots, y + line_h


def _legend_items(candidates, truth):
    """(kind, colour, text) of the legend: what each colour of the picture means."""
    items = [("box", RED, "predicted manipulated face")]
    if candidates:
        items.append(("box", ORANGE, "candidate face, S^v score"))
    if truth:
        items.append(("box", GREEN, "true manipulated face"))
    items.append(("word", RED, "red word: predicted fake"))
    if truth:
        items.append(("underline", GREEN, "true fake word"))
    return items


def _draw_legend(draw, items, font, width, top, line_h):
    """Swatch + text per item, wrapped; returns the y below the legend."""
    widths = [(0 if kind == "word" else 22) + draw.textlength(text, font=font) for kind, _, text in items]
    spots, bottom = _flow(widths, width, 10, top, line_h)
    for (kind, color, text), (x, y) in zip(items, spots):
        if kind == "box":
            draw.rectangle([x, y + 3, x + 16, y + font.size], outline=color, width=3)
            x += 22
        draw.text((x, y), text, fill=color if kind == "word" else BLACK, font=font)
        if kind == "underline":
            draw.line([(x, y + line_h - 5), (x + draw.textlength(text, font=font), y + line_h - 5)], fill=color,
                      width=2)
    return bottom


def _text_panel(words, pred, true, info, legend_items, width, font):
    """White panel under the image: info lines, the caption (predicted words RED, true words underlined GREEN),
    the legend. Returns the panel image."""
    line_h = font.size + 8
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    info_words = [w for line in info for w in line.split(" ")]
    info_spots, top = _flow([probe.textlength(w, font=font) for w in info_words], width, 10, 10, line_h)
    spots, top = _flow([probe.textlength(w, font=font) for w in words], width, 10, top + (8 if info else 0), line_h)
    legend_top = top + 8
    if legend_items:
        top = _draw_legend(probe, legend_items, font, width, legend_top, line_h)
    panel = Image.new("RGB", (width, top + 10), WHITE)
    draw = ImageDraw.Draw(panel)
    for word, (x, y) in zip(info_words, info_spots):
        draw.text((x, y), word, fill=BLACK, font=font)
    for word, (x, y), p, t in zip(words, spots, pred, true):
        draw.text((x, y), word, fill=RED if p else BLACK, font=font)
        if t:
            draw.line([(x, y + line_h - 5), (x + draw.textlength(word, font=font), y + line_h - 5)], fill=GREEN,
                      width=2)
    if legend_items:
        _draw_legend(draw, legend_items, font, width, legend_top, line_h)
    return panel


def render_prediction(image, caption_words, pred_box, gt_box, token_pred_words, token_true_words, out_path,
                      width=512, font_size=18, candidates=(), info=(), legend=False, fmt=None):
    """Draw the picture described in the module docstring and save it to ``out_path`` (a path, or an open binary
    file with ``fmt`` the PIL format name)."""
    img = Image.open(image).convert("RGB") if isinstance(image, (str, os.PathLike)) else image.convert("RGB")
    img = img.resize((width, max(1, round(img.height * width / img.width))), Image.BICUBIC)
    font = ImageFont.load_default(size=font_size)
    _draw_boxes(img, list(candidates), pred_box, gt_box, ImageFont.load_default(size=max(10, font_size - 4)))
    words = caption_words.split() if isinstance(caption_words, str) else list(caption_words)
    truth = token_true_words is not None
    pred = list(token_pred_words) + [0] * (len(words) - len(token_pred_words))
    true = list(token_true_words or []) + [0] * (len(words) - len(token_true_words or []))
    items = _legend_items(list(candidates), truth and gt_box is not None) if legend else []
    panel = _text_panel(words, pred, true, list(info), items, width, font)
    canvas = Image.new("RGB", (width, img.height + panel.height), WHITE)
    canvas.paste(img, (0, 0))
    canvas.paste(panel, (0, img.height))
    if isinstance(out_path, (str, os.PathLike)):
        os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    canvas.save(out_path, format=fmt)
    return out_path


def probability_lines(pair, image, text, label=None):
    """The ``info`` line of a picture: pair / image / text p(fake) (and the true label when known)."""
    truth = "" if label is None else f" (true: {'fake' if label else 'real'})"
    return [f"p(fake): pair {pair:.2f}{truth}, image {image:.2f}, text {text:.2f}"]


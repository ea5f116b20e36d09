"""Figure-3 pictures of evaluated samples (test.py --visualize): a ``DGM4Dataset`` sample and its
``predictions.jsonl`` record -> the words, flags and boxes that ``utils.visualize.render_prediction`` draws.

``render_figure3(dataset, prediction, out_path)`` draws one prediction record: the original image (``dataset.root``
+ record path), its candidates with their S^v (``cand_boxes``, ``box_scores`` of the record), the normalised
caption, predicted words = words with a predicted fake token (tokens mapped to whitespace words by character
offsets, ``datasets.text.token_words``), true words = the record's ``fake_text_pos`` mapped onto the normalised
words (``align_words``' owners), the probabilities and the legend. ``render_predictions(dataset, predictions, n,
out_dir)`` renders the first ``n`` manipulated samples. The word alignment needs the dataset's text rules, which is
why this lives here and not in ``utils/`` (a leaf: it imports nothing else of the project).
"""
import os

from datasets.text import align_words, encode, token_words
from utils.visualize import probability_lines, render_prediction, word_flags_from_tokens


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
    candidates = list(zip(prediction.get("cand_boxes", []), prediction.get("box_scores", [])))
    info = []
    if all(k in prediction for k in ("score", "v_fine", "t_fine")):
        info = probability_lines(prediction["score"], prediction["v_fine"], prediction["t_fine"],
                                 prediction.get("label"))
    return render_prediction(image_path, words, prediction["pred_box"], prediction["gt_box"], pred, true, out_path,
                             candidates=candidates, info=info, legend=True)


def render_predictions(dataset, predictions, n, out_dir):
    """Render the first ``n`` manipulated samples of ``predictions`` into ``out_dir/<id>.png``; return the paths."""
    chosen = [p for p in predictions if p["fake_cls"] != "orig"][:n]
    return [render_figure3(dataset, p, os.path.join(out_dir, f"{p['id']}.png")) for p in chosen]

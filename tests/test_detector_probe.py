"""scripts/detector_probe.py: the zero-shot read-out of pre-training's replaced-unit detector, per word kind and per
sentence score, within the pairs whose image is pristine or manipulated."""
import torch

from models.meter_heads import RUDHead
from scripts.detector_probe import detector_report, detector_scores, train_weak_head


def _detector(dim):
    """A ``RUDHead`` that reads feature 0 alone: logit 4 * x0 - 2."""
    head = RUDHead(dim)
    with torch.no_grad():
        head.fc.weight.zero_()
        head.fc.weight[0, 0] = 4.0
        head.fc.bias.fill_(-2.0)
    return head


def _feats(n=40, length=6, dim=4, seed=0):
    """Pairs 0..n/2-1 pristine image, the rest manipulated; every odd pair has a swapped word at token 2 (feature 0 =
    1 there, label 1); manipulated-image pairs carry a disagreeing word at token 3 (feature 0 = 1, label 0), as a
    face swap's original caption does."""
    g = torch.Generator().manual_seed(seed)
    t_hat = torch.randn(n, length, dim, generator=g) * 0.05
    label = torch.zeros(n, length, dtype=torch.long)
    y_t, y_v = (torch.arange(n) % 2).float(), (torch.arange(n) >= n // 2).float()
    t_hat[y_t > 0, 2, 0], label[y_t > 0, 2] = 1.0, 1
    t_hat[y_v > 0, 3, 0] = 1.0
    content = torch.ones(n, length, dtype=torch.bool)
    content[:, 0] = False  # <s>: never a content token
    kind = torch.zeros(n, length, dtype=torch.long)
    kind[:, 4:] = 1  # kind 1 holds no swapped word: its AUC is undefined
    return {"t_hat": t_hat.half(), "label": label, "content": content, "kind": kind, "y_t": y_t, "y_v": y_v}


def test_the_detector_reads_swapped_words_and_the_report_splits_pristine_from_manipulated_images():
    feats = _feats()
    words = feats["content"].clone()
    prob, sentence = detector_scores(_detector(4), feats, words, k=2)
    assert prob.shape == (40, 6) and set(sentence) == {"max", "topk"}
    assert torch.allclose(sentence["max"], prob.masked_fill(~feats["content"], -1).amax(dim=1))
    top2 = prob.masked_fill(~words, -1).topk(2, dim=1).values.mean(dim=1)
    assert torch.allclose(sentence["topk"], top2)
    report = detector_report(prob, sentence, feats, ("names", "colours"))
    assert report["token"] == {"names": 100.0, "colours": None}
    assert report["sentence"]["max"]["pristine_image"] == report["sentence"]["topk"]["pristine_image"] == 100.0
    # a manipulated image's true caption holds a disagreeing word that scores like a swapped one: the most suspicious
    # token cannot tell the two captions apart, the mean of the top two can (a fake holds two such words)
    assert report["sentence"]["max"]["edited_image"] < 80.0 and report["sentence"]["max"]["all"] < 100.0
    assert report["sentence"]["topk"]["edited_image"] == 100.0


def test_the_weak_read_out_learns_the_sentence_label_from_top_k_tokens_and_can_start_from_the_detector():
    train, test = _feats(n=200, seed=1), _feats(seed=2)
    detector = _detector(4)
    start = train_weak_head(train, train["content"], k=2, steps=0, init=detector)
    assert torch.equal(start.weight, detector.fc.weight) and start.bias.item() == -2.0
    head = train_weak_head(train, train["content"], k=2, steps=300)
    assert not torch.equal(head.weight, start.weight)
    _, sentence = detector_scores(head, test, test["content"], k=2)
    report = detector_report(*detector_scores(head, test, test["content"], k=2), test, ("names", "colours"))
    # y_t from the sentence label alone, within each image class; across them a fake caption with a pristine image
    # ties a true caption with a manipulated one (one suspicious word each), so "all" stays near 87.5
    assert report["sentence"]["topk"]["pristine_image"] > 95.0 and report["sentence"]["topk"]["edited_image"] > 95.0
    assert 80.0 < report["sentence"]["topk"]["all"] < 90.0
    assert sentence["topk"].shape == (40,)

"""The ideal observer's sentence decision on the synthetic benchmark: an upper bound for t_coarse AUC (issue 9).

Which text manipulations can be told at all from what a picture shows? An observer that perceives the picture
perfectly and is told which pictured face each caption slot describes sees, for every slot of the caption, a cue
``(kind, on_traced_face, disagrees)``:

    kind             N (a person's name), E (expression), C (shirt colour), H (hair colour), P (the place)
    on_traced_face   the slot describes the face that carries the forgery trace (P: never)
    disagrees        the caption's value differs from the picture: a name whose look (identity, hair colour) is not
                     the pictured face's, an expression / colour not shown, another place

The tuple of these cues, led by whether the image carries a trace, is the pair's signature; the observer's best
score for "is the caption manipulated" is the posterior P(y_t = 1 | signature), counted over ``--estimate`` samples
generated with another seed. Its ROC AUC on the benchmark's split (the same records as make_synthetic.py writes) is
what any model can reach from these cues at most; being told the slot-face mapping makes it an upper bound.
Variants take one ability away:

    no_trace_location  sees whether the image is manipulated, not which face (on_traced_face always false)
    no_trace           sees no trace at all (a pure caption-picture comparator)
    no_expression      cannot read expressions (every E slot agrees)

(and "no_expression, no_trace_location").

Signatures do not depend on the difficulty options (trace strength, face sizes), so neither does the bound.
Prints one line per variant: AUC over all pairs, over pairs with a pristine / a manipulated image (the evaluator's
``aux/t_coarse_AUC/{pristine,edited}_image``), and how many test pairs get a posterior strictly between 0.02 and 0.98.

Usage::

    python scripts/ideal_observer.py [--test 1000] [--estimate 20000] [--seed 0]
"""
import argparse
import collections

from sklearn.metrics import roc_auc_score

from preprocess import make_synthetic as ms

VARIANTS = {"full": (), "no_trace_location": ("where",), "no_trace": ("where", "trace"),
            "no_expression": ("expression",), "no_expression, no_trace_location": ("expression", "where")}
FACE_KEY = {"E": "expr", "C": "shirt", "H": "hair"}
CAST_BY_NAME = {c["name"]: i for i, c in enumerate(ms.CAST)}


def is_cue(slot):
    """Whether a caption slot describes the picture: the slots of ``make_synthetic.SLOT_KINDS`` (names,
    expressions, colours, the place); the fillers (year, event, role, date) do not."""
    return any(pattern.fullmatch(slot) for _, pattern in ms.SLOT_KINDS)


def signature(extras, blind=()):
    """The cue tuple of one sample (``extras`` from ``make_synthetic.make_sample``), slots in caption order, led by
    whether the image is manipulated; ``blind`` holds the abilities the observer lacks: "where" (which face carries
    the trace), "trace" (whether any does), "expression" (reading expressions)."""
    slots, changed, faces = extras["slots"], extras["changed"], extras["states"]
    edited = extras["manip_face"] is not None
    traced = -1 if not edited or "where" in blind else extras["manip_face"]
    cues = [("image", edited and "trace" not in blind)]
    for slot in extras["caption_slots"]:
        if not is_cue(slot):
            continue
        value = changed.get(slot, slots[slot])
        if slot == "P":
            cues.append(("P", False, value != extras["place"]))
            continue
        j = extras["people"][int(slot[1])]
        face = faces[j]
        if slot[0] == "N":
            named = CAST_BY_NAME[value]
            disagrees = named != face["id"] or face["hair"] != ms.CAST[named]["hair"]
        else:
            disagrees = value != face[FACE_KEY[slot[0]]] and not (slot[0] == "E" and "expression" in blind)
        cues.append((slot[0], j == traced, disagrees))
    return tuple(cues)


def samples(seed, split, n):
    """[(extras, y_t, y_v)] of the first ``n`` samples of ``split`` (make_synthetic's own generator)."""
    out = []
    for i in range(n):
        rec, _, extras = ms.make_sample(seed, split, i)
        out.append((extras, int("text" in rec["fake_cls"]), int(rec["fake_cls"].startswith("face"))))
    return out


def observe(estimate, test, blind):
    """{auc, pristine_image, edited_image, ambiguous} (percent, count) of the posterior score on ``test``."""
    counts = collections.defaultdict(lambda: [0, 0])
    for extras, y_t, _ in estimate:
        c = counts[signature(extras, blind)]
        c[0], c[1] = c[0] + y_t, c[1] + 1
    score, y, edited = [], [], []
    for extras, y_t, y_v in test:
        hits, total = counts.get(signature(extras, blind), (0, 0))
        score.append(hits / total if total else 0.5)
        y.append(y_t)
        edited.append(y_v)

    def auc(keep):
        ys = [a for a, k in zip(y, keep) if k]
        return round(100 * roc_auc_score(ys, [s for s, k in zip(score, keep) if k]), 2) if 0 < sum(ys) < len(ys) \
            else None
    return {"auc": auc([True] * len(y)), "pristine_image": auc([not e for e in edited]),
            "edited_image": auc(edited), "ambiguous": sum(0.02 < s < 0.98 for s in score)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--test", type=int, default=1000, help="samples of the test split (the demo's: 1000)")
    p.add_argument("--estimate", type=int, default=20000, help="training-split samples (seed + 1) for the posterior")
    p.add_argument("--seed", type=int, default=0, help="the benchmark's seed (make_synthetic.py --seed)")
    args = p.parse_args(argv)
    estimate, test = samples(args.seed + 1, "train", args.estimate), samples(args.seed, "test", args.test)
    results = {}
    for name, blind in VARIANTS.items():
        r = results[name] = observe(estimate, test, blind)
        print(f"{name:24s} t_coarse AUC {r['auc']}, pristine image {r['pristine_image']}, manipulated image "
              f"{r['edited_image']}; ambiguous pairs {r['ambiguous']} of {len(test)}", flush=True)
    return results


if __name__ == "__main__":
    main()

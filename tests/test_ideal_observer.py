"""scripts/ideal_observer.py: the cues it reads from the generator, and the bound they give."""
from scripts.ideal_observer import is_cue, observe, samples, signature


def test_cues_mark_exactly_the_slots_that_disagree_with_the_picture():
    seen = set()
    for extras, y_t, y_v in samples(3, "train", 160):
        cues = signature(extras)
        image, slots = cues[0], cues[1:]
        assert image == ("image", bool(y_v))
        named = [s for s in extras["caption_slots"] if is_cue(s)]
        assert [c[0] for c in slots] == [s[0] for s in named]
        if not y_v:  # a pristine picture: a slot disagrees if and only if the caption changed it
            assert [c[2] for c in slots] == [s in extras["changed"] for s in named], extras
            assert not any(c[1] for c in slots)
            seen.add("text" if y_t else "orig")
        elif not y_t:  # a manipulated face under a true caption: only slots describing that face can disagree
            for s, c in zip(named, slots):
                assert not c[2] or (s != "P" and extras["people"][int(s[1])] == extras["manip_face"] and c[1])
            seen.add("image")
        blind = signature(extras, ("where", "expression"))
        assert not any(c[1] for c in blind[1:]) and not any(c[2] for c in blind[1:] if c[0] == "E")
    assert seen == {"orig", "text", "image"}


def test_bound_is_perfect_on_pristine_pictures_and_drops_without_expressions():
    estimate, test = samples(1, "train", 600), samples(0, "test", 300)
    full = observe(estimate, test, ())
    assert full["pristine_image"] == 100.0
    assert full["edited_image"] < 100.0  # a face swap under a true caption looks like a swapped name
    no_expr = observe(estimate, test, ("expression",))
    assert no_expr["auc"] < full["auc"] and no_expr["ambiguous"] > full["ambiguous"]

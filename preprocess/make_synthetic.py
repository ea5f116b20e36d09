"""Synthetic benchmark in the exact DGM4 format (docs/protocol.md sections 1.2-1.4).

It exercises what CIEC must learn from weak labels (paper sections 2.3-2.4): a LOCAL image trace confined to one
face box (TRPS, 2.3), found among MTCNN-like candidate boxes, and caption words that only a comparison with the
image reveals as false (VCTG, 2.4). Design, statistics and the mapping onto DGM4: docs/synthetic_benchmark.md.

Scenes hold 1-4 drawn faces of a fixed cast of named identities (fixed skin, hair colour, hair style,
accessory) on a background that the caption's place word names. Per scene each person has an expression and a
shirt colour that the caption may mention. Manipulations (``fake_cls`` in DGM4's proportions):
  * face_swap: one face redrawn as another identity; face_attribute: its expression or hair colour changed.
    Both add a trace (feathered colour shift + blocky noise; a seam for swaps) inside ``fake_image_box`` only.
  * text_swap: names (and sometimes the place) replaced by a cast member not pictured (another place);
    text_attribute: an expression or shirt-colour word replaced. ``fake_text_pos`` = replaced word indices.

Usage: ``python preprocess/make_synthetic.py --out DIR --train N --val N --test N --seed S [--pretrain N]
[--workers K]``.
Writes JPEGs under DIR/DGM4/{origin,manipulation}/..., DIR/metadata/{train,val,test}.json (JSON arrays of
records with exactly the DGM4 fields, ``image`` relative to DIR), DIR/synthetic_stats.json and DIR/word_kinds.json
(the normalised name / expression / colour / place words of the captions, ``word_kinds()``).
``--pretrain N`` adds DIR/metadata/pretrain.json: N pristine pairs (every record orig, ids 1000000+i, own images)
for pre-training; it shares no image with the benchmark splits and leaves their bytes unchanged.
Every sample draws from its own RNG seeded by (seed, split, index): the output does not depend on --workers.
"""
import itertools
import json
import math
import multiprocessing as mp
import os
import re
import shutil
import time

import cv2
import numpy as np

from utils.cli import ArgumentParser, positive_int
from utils.errors import BadInputError, exit_on_user_error

# ---------------------------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------------------------
CLASS_PROBS = {  # DGM4 statistics figure (docs/protocol.md 1.4), percent
    "orig": 33.7, "face_swap": 21.3, "face_attribute": 18.0, "text_swap": 9.0, "text_attribute": 3.8,
    "face_swap&text_swap": 5.4, "face_swap&text_attribute": 2.3,
    "face_attribute&text_swap": 4.6, "face_attribute&text_attribute": 1.9,
}
SPLIT_CODES = {"train": 0, "val": 1, "test": 2, "pretrain": 3}
ID_BASE = {"train": 100000, "val": 600000, "test": 800000, "pretrain": 1000000}
BENCHMARK_SPLITS = ("train", "val", "test")
PRISTINE_SPLITS = ("pretrain",)  # splits whose every sample is an orig pair (no class draw, no manipulation)
ORIGIN_SOURCES = ("gardian", "usa_today", "washington_post", "bbc")
SWAP_METHODS, ATTR_METHODS = ("simswap", "infoswap"), ("StyleCLIP", "HFGI")

FIRST = ("Anna John Maria Omar Lena Kofi Yuki Pedro Sara Ivan Mei Lucas Amara Tomas Nina Raj Elena Hugo "
         "Fatima Leo Ines Chen Zara Marco Aisha Felix Noor Diego Hana Emil").split()
LAST = ("Berg Ode Silva Haddad Lind-Varga Mensah Tanaka Ruiz O'Neil Petrov Wong Moreau Okafor Novak "
        "Kowalski-Brandt Patel Costa Lefevre Rahman Fischer Duarte Zhao Karimi Rossi Bello Hansen Ng Castillo "
        "Sato Larsen").split()
# colours are RGB; drawing happens in RGB and the image is flipped to BGR only for cv2.imencode
SKINS = ((255, 224, 196), (234, 192, 150), (198, 145, 100), (150, 100, 66), (96, 62, 40))
HAIR = {"black": (25, 22, 22), "brown": (110, 66, 30), "blond": (240, 210, 110), "red": (200, 60, 25),
        "white": (235, 235, 235), "pink": (245, 120, 190)}
HAIR_NAMES = tuple(HAIR)
STYLES = ("short", "long", "bun", "curly", "bald")
ACCESSORIES = ("none", "glasses", "hat", "sunglasses")
EXPRESSIONS = ("smiling", "frowning", "laughing", "surprised", "serious")
SHIRTS = {"red": (210, 40, 40), "blue": (40, 80, 210), "green": (40, 160, 60), "yellow": (240, 210, 40),
          "white": (245, 245, 245), "black": (30, 30, 30), "orange": (245, 140, 30), "purple": (130, 50, 160)}
SHIRT_NAMES = tuple(SHIRTS)
# place word -> (top colour, bottom colour, horizon fraction, decoration); the caption's place names the scene
PLACES = {"harbour": ((150, 200, 240), (30, 70, 130), 0.55, "waves"),
          "forest": ((120, 170, 120), (30, 80, 30), 0.0, "trees"),
          "city": ((190, 190, 200), (90, 90, 100), 0.0, "buildings"),
          "beach": ((120, 190, 250), (230, 205, 140), 0.5, "none"),
          "stadium": ((60, 60, 90), (40, 150, 60), 0.45, "stripes"),
          "studio": ((120, 60, 110), (40, 20, 50), 0.0, "spots")}
PLACE_NAMES = tuple(PLACES)
EVENTS = ("g7 summit", "covid19 briefing", "co-op meeting", "post-match interview", "u.s. visit",
          "2020s forum", "us$5m launch", "press conference", "charity gala", "50% rally")
ROLES = ("Co-founder", "Vice-president", "CEO", "Coach", "Ex-minister", "Mayor")
DATES = ("Jan. 5", "12/03/2019", "May 1st", "Oct. 30", "2021-06-14")
# {N*} name (2 words), {E*} expression, {C*} shirt colour, {H0} hair colour, {P} place; the rest are fillers.
# Every template names person 0 and holds at least one attribute slot ({E*} or {C*}).
TEMPLATES = (
    (1, "{N0}, {E0} in a {C0} shirt, arrives at the {P} in {Y}."),
    (1, "{ROLE} {N0} ({E0}) speaks at the {EV} at the {P}."),
    (1, '"We are ready," says a {E0} {N0}, wearing a {C0} jacket, at the {P} on {DATE}.'),
    (1, "A {E0} {N0} with {H0} hair arrives for the {EV} at the {P}, {Y}."),
    (1, "{N0} ({C0} shirt) was {E0} at the {P} after the {EV}."),
    (1, "{ROLE} {N0}, in {C0}, looks {E0} during a {EV} at the {P}."),
    (1, "At the {P}: {N0}'s {C0} shirt and {E0} face at the {EV} on {DATE}."),
    (2, "{N0}, {E0} in a {C0} shirt, meets {N1} at the {P} in {Y}."),
    (2, "{N0} and a {E1} {N1} pose at the {P} before the {EV}."),
    (2, "{ROLE} {N0} ({C0}) and {N1} ({C1}) at the {P}, {Y}."),
    (2, "\"It's a co-operation,\" said {N0}, {E0}, next to {N1} at the {P}."),
    (2, "{N1} in a {C1} shirt watches a {E0} {N0} at the {EV} at the {P}."),
)
# forgery trace per unit of --trace-strength (default 1.5), in grey levels: per-channel shift range,
# blocky-noise sigma, seam amplitude
TRACE = {"shift": (8.0, 16.0), "noise": 10.0, "seam": 25.0}
STRENGTH = 1.5  # default --trace-strength
DISTRACTOR_TRACE = 0.4  # default --distractor-trace: share of distractor shapes with trace-like noise
FACE_AREA = (0.008, 0.20)  # default --face-area: range of face box area / image area (log-uniform draw)
SLOT_RE = re.compile(r"\{(\w+)\}")


def _cast():
    """Fixed cast: identity i has a unique (skin, hair colour) pair; style and accessory follow fixed rules."""
    cast = []
    for i in range(len(FIRST)):
        cast.append({"name": f"{FIRST[i]} {LAST[i]}", "skin": i % len(SKINS),
                     "hair": HAIR_NAMES[(i // len(SKINS)) % len(HAIR_NAMES)],
                     "style": STYLES[(3 * i + i // 7) % len(STYLES)],
                     "accessory": ACCESSORIES[(i + 2 * (i // 4)) % len(ACCESSORIES)]})
    return cast


CAST = _cast()


def class_of(index, offset):
    """fake_cls of sample ``index``: golden-ratio low-discrepancy draw, so any run of samples follows the mix."""
    u = (offset + index * 0.6180339887498949) % 1.0
    acc = 0.0
    for name, pct in CLASS_PROBS.items():
        acc += pct / 100.0
        if u < acc:
            return name
    return "orig"


# ---------------------------------------------------------------------------------------------------------------
# Scene layout
# ---------------------------------------------------------------------------------------------------------------
def face_box(face):
    """Detector-style box [x1, y1, x2, y2] (ints) of a face: cheek to cheek, hair line to chin."""
    cx, cy, a, b = face["cx"], face["cy"], face["a"], face["b"]
    return [int(round(cx - 1.05 * a)), int(round(cy - 1.15 * b)), int(round(cx + 1.05 * a)),
            int(round(cy + 1.05 * b))]


def layout_faces(rng, w, h, k, face_area=FACE_AREA):
    """k non-overlapping faces in k vertical slots; box area / image area ~ log-uniform(face_area), by default
    (0.8%, 20%), then limited by the slot width."""
    ids = rng.choice(len(CAST), size=k, replace=False)
    slot = w / k
    faces = []
    for j, ident in enumerate(ids):
        frac = math.exp(rng.uniform(math.log(face_area[0]), math.log(face_area[1])))
        a = math.sqrt(frac * w * h / (2.1 * 2.2 * 1.2))
        a = float(np.clip(a, 9.0, min(0.40 * slot, h / 6.5)))
        b = 1.2 * a
        cx = rng.uniform(j * slot + 1.2 * a, (j + 1) * slot - 1.2 * a)
        cy = rng.uniform(1.45 * b, h - 1.4 * b)
        faces.append({"id": int(ident), "cx": cx, "cy": cy, "a": a, "b": b,
                      "hair": CAST[ident]["hair"], "expr": EXPRESSIONS[rng.integers(len(EXPRESSIONS))],
                      "shirt": SHIRT_NAMES[rng.integers(len(SHIRT_NAMES))]})
    return faces


# ---------------------------------------------------------------------------------------------------------------
# Drawing (RGB uint8, cv2 primitives, numpy vectorised)
# ---------------------------------------------------------------------------------------------------------------
_NOISE = {}


def noise_bank():
    """A fixed 640x640x3 int16 tile of N(0, 1) noise x 8 (cropped at random offsets; built once per process)."""
    if "tile" not in _NOISE:
        _NOISE["tile"] = np.round(np.random.default_rng(12345).normal(0, 8, (640, 640, 3))).astype(np.int16)
    return _NOISE["tile"]


def _crop_noise(rng, h, w):
    tile = noise_bank()
    y, x = rng.integers(0, tile.shape[0] - h + 1), rng.integers(0, tile.shape[1] - w + 1)
    return tile[y:y + h, x:x + w]


def draw_background(rng, w, h, place, distractor_trace=DISTRACTOR_TRACE):
    """Place-coloured gradient + low-frequency texture (built at 1/4 size, upsampled) + decoration + distractors."""
    top, bottom, horizon, deco = PLACES[place]
    gh, gw = h // 4 + 1, w // 4 + 1
    t = np.linspace(0.0, 1.0, gh, dtype=np.float32)[:, None]
    if horizon > 0:
        t = (t > horizon).astype(np.float32) * 0.8 + t * 0.2
    col = (np.float32(top) * (1 - t) + np.float32(bottom) * t)[:, None, :]
    coarse = rng.uniform(-18, 18, (rng.integers(3, 9), rng.integers(3, 9), 3)).astype(np.float32)
    small = np.clip(col + cv2.resize(coarse, (gw, gh), interpolation=cv2.INTER_CUBIC), 0, 255).astype(np.uint8)
    img = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    _draw_decoration(img, rng, deco, horizon)
    _draw_distractors(img, rng, distractor_trace)
    return img


def _draw_decoration(img, rng, deco, horizon):
    h, w = img.shape[:2]
    if deco == "waves":
        for _ in range(8):
            y, x = int(rng.uniform(horizon * h, h)), int(rng.uniform(0, w))
            cv2.ellipse(img, (x, y), (int(rng.uniform(10, 30)), 4), 0, 180, 360, (200, 220, 245), 2)
    elif deco == "trees":
        for _ in range(int(rng.integers(3, 8))):
            x, s = int(rng.uniform(0, w)), int(rng.uniform(20, 60))
            pts = np.array([[x, h - 3 * s], [x - s, h], [x + s, h]], np.int32)
            cv2.fillPoly(img, [pts], (20, int(rng.uniform(70, 120)), 30))
    elif deco == "buildings":
        for _ in range(int(rng.integers(3, 7))):
            x, bw, bh = int(rng.uniform(0, w)), int(rng.uniform(30, 80)), int(rng.uniform(h * 0.3, h * 0.8))
            g = int(rng.uniform(60, 140))
            cv2.rectangle(img, (x, h - bh), (x + bw, h), (g, g, g + 10), -1)
    elif deco == "stripes":
        for y in range(int(h * 0.45), h, 24):
            cv2.line(img, (0, y), (w, y), (70, 170, 80), 6)
    elif deco == "spots":
        for _ in range(5):
            c = (int(rng.uniform(0, w)), int(rng.uniform(0, h)))
            cv2.circle(img, c, int(rng.uniform(20, 60)), (150, 90, 140), -1)


def _draw_distractors(img, rng, trace_prob=DISTRACTOR_TRACE):
    """Random shapes; a share ``trace_prob`` carry blocky noise like the forgery trace (authentic look-alikes)."""
    h, w = img.shape[:2]
    for _ in range(int(rng.integers(0, 5))):
        x1, y1 = int(rng.uniform(0, w - 20)), int(rng.uniform(0, h - 20))
        x2, y2 = x1 + int(rng.uniform(12, 70)), y1 + int(rng.uniform(12, 70))
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            cv2.rectangle(img, (x1, y1), (x2, y2), color, -1)
        else:
            cv2.circle(img, ((x1 + x2) // 2, (y1 + y2) // 2), (x2 - x1) // 2, color, -1)
        if rng.random() < trace_prob:
            roi = img[y1:y2, x1:x2]
            blocks = _blocky_noise(rng, roi.shape[0], roi.shape[1], 12.0, max(2, (x2 - x1) // 10))
            roi[:] = np.clip(roi + blocks, 0, 255).astype(np.uint8)


def _blocky_noise(rng, h, w, sigma, cell):
    coarse = rng.normal(0, sigma, (h // cell + 1, w // cell + 1, 3)).astype(np.float32)
    return cv2.resize(coarse, ((w // cell + 1) * cell, (h // cell + 1) * cell),
                      interpolation=cv2.INTER_NEAREST)[:h, :w]


def _pt(x, y):
    return int(round(x)), int(round(y))


def _ax(x, y):
    return max(1, int(round(x))), max(1, int(round(y)))


def draw_face(img, face, feature_scale=1.0):
    """Shirt, neck, hair, head, eyes, brows, mouth (expression) and accessory of one person; ``feature_scale``
    multiplies the stroke width of the brows and the mouth (the expression's strokes)."""
    ident = CAST[face["id"]]
    cx, cy, a, b = face["cx"], face["cy"], face["a"], face["b"]
    skin, hair = SKINS[ident["skin"]], HAIR[face["hair"]]
    style = ident["style"]
    cv2.ellipse(img, _pt(cx, cy + 2.3 * b), _ax(1.9 * a, 1.3 * b), 0, 0, 360, SHIRTS[face["shirt"]], -1)
    cv2.rectangle(img, _pt(cx - 0.35 * a, cy + 0.6 * b), _pt(cx + 0.35 * a, cy + 1.3 * b), skin, -1)
    if style == "long":
        cv2.ellipse(img, _pt(cx, cy + 0.2 * b), _ax(1.25 * a, 1.15 * b), 0, 0, 360, hair, -1)
    cv2.ellipse(img, _pt(cx, cy), _ax(a, b), 0, 0, 360, skin, -1)
    if style in ("short", "long", "bun", "curly"):
        cv2.ellipse(img, _pt(cx, cy - 0.3 * b), _ax(1.03 * a, 0.8 * b), 0, 180, 360, hair, -1)
    if style == "bun":
        cv2.circle(img, _pt(cx, cy - 1.05 * b), max(2, int(0.32 * a)), hair, -1)
    elif style == "curly":
        for dx in (-0.8, -0.4, 0.0, 0.4, 0.8):
            cv2.circle(img, _pt(cx + dx * a, cy - 0.95 * b + abs(dx) * 0.4 * b), max(2, int(0.3 * a)), hair, -1)
    elif style == "bald":
        cv2.ellipse(img, _pt(cx, cy - 0.1 * b), _ax(1.02 * a, 0.5 * b), 0, 160, 200, hair, max(1, int(0.12 * a)))
    _draw_features(img, cx, cy, a, b, face["expr"], feature_scale)
    _draw_accessory(img, cx, cy, a, b, ident["accessory"])


def _draw_features(img, cx, cy, a, b, expr, scale=1.0):
    eye_r, thick = max(1, int(0.13 * a)), max(1, int(0.08 * a * scale))
    for s in (-1, 1):
        cv2.circle(img, _pt(cx + s * 0.4 * a, cy - 0.1 * b), eye_r, (30, 25, 25), -1)
        lift = {"surprised": 0.42, "frowning": 0.25}.get(expr, 0.32)
        inner = -0.1 if expr == "frowning" else 0.0
        cv2.line(img, _pt(cx + s * 0.2 * a, cy - (lift + inner) * b), _pt(cx + s * 0.6 * a, cy - lift * b),
                 (40, 30, 30), thick)
    my, mw = cy + 0.5 * b, 0.38 * a
    if expr == "smiling":
        cv2.ellipse(img, _pt(cx, my - 0.12 * b), _ax(mw, 0.2 * b), 0, 0, 180, (150, 30, 40), thick + 1)
    elif expr == "frowning":
        cv2.ellipse(img, _pt(cx, my + 0.12 * b), _ax(mw, 0.15 * b), 0, 180, 360, (150, 30, 40), thick + 1)
    elif expr == "laughing":
        cv2.ellipse(img, _pt(cx, my - 0.08 * b), _ax(mw, 0.25 * b), 0, 0, 180, (120, 20, 30), -1)
    elif expr == "surprised":
        cv2.ellipse(img, _pt(cx, my), _ax(0.16 * a, 0.16 * b), 0, 0, 360, (110, 20, 30), -1)
    else:
        cv2.line(img, _pt(cx - mw, my), _pt(cx + mw, my), (150, 30, 40), thick + 1)


def _draw_accessory(img, cx, cy, a, b, acc):
    r, thick = max(2, int(0.22 * a)), max(1, int(0.07 * a))
    if acc in ("glasses", "sunglasses"):
        for s in (-1, 1):
            cv2.circle(img, _pt(cx + s * 0.4 * a, cy - 0.1 * b), r, (20, 20, 20), -1 if acc == "sunglasses" else thick)
        cv2.line(img, _pt(cx - 0.18 * a, cy - 0.1 * b), _pt(cx + 0.18 * a, cy - 0.1 * b), (20, 20, 20), thick)
    elif acc == "hat":
        cv2.rectangle(img, _pt(cx - 0.75 * a, cy - 1.12 * b), _pt(cx + 0.75 * a, cy - 0.62 * b), (60, 40, 30), -1)
        cv2.line(img, _pt(cx - 1.1 * a, cy - 0.62 * b), _pt(cx + 1.1 * a, cy - 0.62 * b), (60, 40, 30),
                 max(2, int(0.12 * a)))


def apply_trace(img, box, rng, kind, strength):
    """The forgery trace, confined to ``box``: feathered ellipse mask x (colour shift + blocky noise) (+ seam)."""
    x1, y1, x2, y2 = box
    roi = img[y1:y2, x1:x2]
    h, w = roi.shape[:2]
    mask = np.zeros((h, w), np.float32)
    cv2.ellipse(mask, (w // 2, h // 2), (max(1, w // 2 - 1), max(1, h // 2 - 1)), 0, 0, 360, 1.0, -1)
    mask = cv2.GaussianBlur(mask, (0, 0), max(1.0, 0.06 * min(h, w)))
    shift = rng.uniform(*TRACE["shift"], 3).astype(np.float32) * rng.choice(np.float32([-1, 1]), 3)
    delta = shift * strength + _blocky_noise(rng, h, w, TRACE["noise"] * strength, max(2, min(h, w) // 12))
    out = roi.astype(np.float32) + mask[..., None] * delta
    if kind == "face_swap":  # blending seam: a bright/dark band where the pasted face meets its surround
        out += (4.0 * mask * (1.0 - mask))[..., None] * np.float32(rng.choice([-1, 1]) * TRACE["seam"] * strength)
    roi[:] = np.clip(out, 0, 255).astype(np.uint8)


def render(rng, w, h, place, faces, manip=None, strength=STRENGTH, distractor_trace=DISTRACTOR_TRACE,
           feature_scale=1.0):
    """Background, faces, camera noise, then (if ``manip``) the trace in the manipulated face's box."""
    img = draw_background(rng, w, h, place, distractor_trace)
    for face in faces:
        draw_face(img, face, feature_scale)
    img = np.clip(img + _crop_noise(rng, h, w) // 3, 0, 255).astype(np.uint8)
    trace_rng = np.random.default_rng(rng.integers(2 ** 63))
    if manip is not None:
        apply_trace(img, clip_box(face_box(faces[manip["face"]]), w, h), trace_rng, manip["kind"], strength)
    return img


def clip_box(box, w, h):
    x1, y1, x2, y2 = box
    return [max(0, x1), max(0, y1), min(w, x2), min(h, y2)]


# ---------------------------------------------------------------------------------------------------------------
# Captions
# ---------------------------------------------------------------------------------------------------------------
def render_caption(template, slots):
    """Fill ``template``; return (text, {slot: [word indices]}) with words = text split on single spaces."""
    words, owner = [], {}
    for piece in template.split(" "):
        names = SLOT_RE.findall(piece)
        out = piece.format(**slots).split(" ")
        for name in names:
            owner.setdefault(name, []).extend(range(len(words), len(words) + len(out)))
        words.extend(out)
    return " ".join(words), owner


def caption_slots(rng, template, faces, place):
    """Slot values describing the ORIGINAL scene: persons 0/1 are pictured faces."""
    order = rng.permutation(len(faces))
    slots = {"P": place, "Y": str(int(rng.integers(1995, 2024))), "EV": EVENTS[rng.integers(len(EVENTS))],
             "ROLE": ROLES[rng.integers(len(ROLES))], "DATE": DATES[rng.integers(len(DATES))]}
    people = {}
    for j in range(2):
        if "{N%d}" % j in template:
            f = faces[order[j]]
            people[j] = int(order[j])
            slots.update({f"N{j}": CAST[f["id"]]["name"], f"E{j}": f["expr"], f"C{j}": f["shirt"],
                          f"H{j}": f["hair"]})
    return slots, people


# slot of a caption word -> its kind in word_kinds(); the other slots ({Y}, {EV}, {ROLE}, {DATE}) are fillers
SLOT_KINDS = (("names", re.compile(r"N\d")), ("expressions", re.compile(r"E\d")), ("colours", re.compile(r"[CH]\d")),
              ("places", re.compile(r"P")))


def word_kinds():
    """Normalised word forms (``datasets.text.normalize_caption``, split on " ") that the captions' slots give:
    {"names": cast first / last name words and the possessive forms of "{N0}'s" ("bergs", "vargas"),
    "expressions": expression words, "colours": shirt- and hair-colour words (one kind: "black", "red" and
    "white" are both), "places": place words, "source": ...}. A text_attribute swap stays within a kind, and so do
    the one-unit negatives of pre-training (``datasets.pretrain.word_swap_negatives``), which draw donors by kind.
    Derived from the vocabularies rendered into every slot-bearing template piece, so punctuation glued to a slot
    ("{N0}'s", "({E0})", "{P}:") is normalised exactly as in the captions. A word in two kinds is an error."""
    from datasets.text import normalize_caption  # lazy: spawned generator workers do not need it

    values = {"names": [c["name"] for c in CAST], "expressions": list(EXPRESSIONS),
              "colours": list(SHIRT_NAMES) + list(HAIR_NAMES), "places": list(PLACE_NAMES)}
    pieces = {p for _, t in TEMPLATES for p in t.split(" ")}
    slot_pieces = {kind: ["{0}"] for kind in values}  # the bare value, whatever the templates hold
    for piece in pieces:
        for slot in SLOT_RE.findall(piece):
            for kind, pattern in SLOT_KINDS:
                if pattern.fullmatch(slot):
                    slot_pieces[kind].append(SLOT_RE.sub(lambda m: "{0}" if m.group(1) == slot else "", piece))
    kinds = {}
    for kind, vals in values.items():
        words = {w for v in vals for piece in slot_pieces[kind]
                 for w in normalize_caption(piece.format(v), None).split(" ") if w}
        kinds[kind] = sorted(words)
    for a, b in itertools.combinations(values, 2):
        both = set(kinds[a]) & set(kinds[b])
        assert not both, f"words in both {a} and {b}: {sorted(both)}"
    kinds["source"] = "preprocess/make_synthetic.py vocabularies"
    return kinds


def swap_text(rng, slots, template, faces):
    """text_swap: replace 1-2 names by cast members not pictured (and with p=0.3 the place)."""
    named = [s for s in ("N0", "N1") if "{%s}" % s in template]
    taken = {CAST[f["id"]]["name"] for f in faces} | {slots[s] for s in named}
    chosen = named if len(named) == 2 and rng.random() < 0.25 else [named[rng.integers(len(named))]]
    pool = [c["name"] for c in CAST if c["name"] not in taken]
    new = rng.choice(len(pool), size=len(chosen), replace=False)
    changed = dict(zip(chosen, (pool[i] for i in new)))
    if rng.random() < 0.3:
        others = [p for p in PLACE_NAMES if p != slots["P"]]
        changed["P"] = others[rng.integers(len(others))]
    return changed


def swap_attribute(rng, slots, template):
    """text_attribute: replace 1 (p=0.8) or 2 expression / shirt-colour words by other values."""
    present = [s for s in ("E0", "C0", "E1", "C1") if "{%s}" % s in template]
    k = 2 if len(present) > 1 and rng.random() < 0.2 else 1
    changed = {}
    for s in rng.choice(present, size=k, replace=False):
        values = EXPRESSIONS if s.startswith("E") else SHIRT_NAMES
        others = [v for v in values if v != slots[s]]
        changed[str(s)] = others[rng.integers(len(others))]
    return changed


# ---------------------------------------------------------------------------------------------------------------
# One sample
# ---------------------------------------------------------------------------------------------------------------
def manipulate_image(rng, faces, kind):
    """Pick the target face and change it in place: another identity (swap) or expression / hair colour."""
    m = int(rng.integers(len(faces)))
    face = faces[m]
    if kind == "face_swap":
        present = {f["id"] for f in faces}
        pool = [i for i in range(len(CAST)) if i not in present]
        face["id"] = int(pool[rng.integers(len(pool))])
        face["hair"] = CAST[face["id"]]["hair"]
    elif rng.random() < 0.6:
        face["expr"] = [e for e in EXPRESSIONS if e != face["expr"]][rng.integers(len(EXPRESSIONS) - 1)]
    else:
        face["hair"] = [c for c in HAIR_NAMES if c != face["hair"]][rng.integers(len(HAIR_NAMES) - 1)]
    return {"face": m, "kind": kind}


def detector_boxes(rng, faces, w, h, manip_idx, fake_box):
    """MTCNN-like detections: jittered face boxes, misses (3% manipulated / small faces 10%), false positives."""
    boxes = []
    for j, face in enumerate(faces):
        box = face_box(face)
        bw = box[2] - box[0]
        if j == manip_idx:
            if rng.random() < 0.03:
                continue
            if rng.random() < 0.7:
                boxes.append(list(fake_box))
                continue
        elif rng.random() < (0.10 if bw < 36 else 0.03):
            continue
        jit = rng.normal(0, 0.05 * bw, 4)
        boxes.append(clip_box([int(round(v + d)) for v, d in zip(box, jit)], w, h))
    for _ in range(int(rng.random() < 0.2) + int(rng.random() < 0.05)):
        s = int(rng.uniform(16, 0.3 * min(w, h)))
        x, y = int(rng.uniform(0, w - s)), int(rng.uniform(0, h - s))
        boxes.append([x, y, x + s, int(min(h, y + 1.15 * s))])
    boxes = [b for b in boxes if b[2] - b[0] > 1 and b[3] - b[1] > 1][:5]
    return [boxes[i] for i in rng.permutation(len(boxes))]


def image_path(rec_id, fake_cls, rng):
    if fake_cls.startswith("face_swap"):
        method = SWAP_METHODS[rng.integers(2)]
        return f"DGM4/manipulation/{method}/{rec_id}-{int(rng.integers(10 ** 5, 10 ** 6)):06d}-{method}.jpg"
    if fake_cls.startswith("face_attribute"):
        method = ATTR_METHODS[rng.integers(2)]
        return f"DGM4/manipulation/{method}/{rec_id}-{method}.jpg"
    source = ORIGIN_SOURCES[rng.integers(len(ORIGIN_SOURCES))]
    return f"DGM4/origin/{source}/{rec_id // 1000:04d}/{rec_id}.jpg"


def make_sample(seed, split, index, strength=STRENGTH, distractor_trace=DISTRACTOR_TRACE, face_area=FACE_AREA,
                feature_scale=1.0):
    """Build one sample in memory: (record, image RGB uint8, extras for statistics and tests)."""
    rng = np.random.default_rng([seed, SPLIT_CODES[split], index])
    if split in PRISTINE_SPLITS:
        fake_cls = "orig"
    else:
        fake_cls = class_of(index, np.random.default_rng([seed, SPLIT_CODES[split]]).random())
    w, h = int(rng.integers(256, 401)), int(rng.integers(256, 401))
    k = int(rng.choice([1, 2, 3, 4], p=[0.45, 0.30, 0.15, 0.10]))
    faces, place = layout_faces(rng, w, h, k, face_area), PLACE_NAMES[rng.integers(len(PLACE_NAMES))]
    cands = [t for n, t in TEMPLATES if n <= k]
    template = cands[rng.integers(len(cands))]
    slots, people = caption_slots(rng, template, faces, place)
    orig_text, _ = render_caption(template, slots)
    manip, fake_box = None, []
    if fake_cls.startswith("face"):
        manip = manipulate_image(rng, faces, fake_cls.split("&")[0])
        fake_box = clip_box(face_box(faces[manip["face"]]), w, h)
    changed = {}
    if fake_cls.endswith("text_swap"):
        changed = swap_text(rng, slots, template, faces)
    elif fake_cls.endswith("text_attribute"):
        changed = swap_attribute(rng, slots, template)
    text, owner = render_caption(template, {**slots, **changed})
    fake_pos = sorted(i for s in changed for i in owner[s])
    img = render(rng, w, h, place, faces, manip, strength, distractor_trace, feature_scale)
    rec_id = ID_BASE[split] + index
    record = {"id": rec_id, "image": image_path(rec_id, fake_cls, rng), "text": text, "fake_cls": fake_cls,
              "fake_image_box": fake_box, "fake_text_pos": fake_pos,
              "mtcnn_boxes": detector_boxes(rng, faces, w, h, manip["face"] if manip else -1, fake_box)}
    extras = {"orig_text": orig_text, "size": [w, h], "faces": [clip_box(face_box(f), w, h) for f in faces],
              "pictured": [CAST[f["id"]]["name"] for f in faces], "place": place,
              "manip_face": manip["face"] if manip else None,
              # for scripts/ideal_observer.py: the caption's slots (original values, the changed ones, which face
              # each person slot describes) and every face as pictured after the image manipulation
              "slots": slots, "changed": changed, "people": people, "caption_slots": sorted(owner),
              "states": [{k: f[k] for k in ("id", "expr", "shirt", "hair")} for f in faces]}
    return record, img, extras


# ---------------------------------------------------------------------------------------------------------------
# Writing, statistics, CLI
# ---------------------------------------------------------------------------------------------------------------
def write_jpeg(out, record, img, quality=90):
    """Encode the RGB ``img`` as JPEG at ``out / record["image"]``."""
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(img[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError(f"record {record['id']}: JPEG encoding failed")
    path = os.path.join(out, record["image"])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(buf.tobytes())


def write_chunk(args):
    """Worker: generate and write samples ``indices`` of ``split``; return [(record, small stats)]."""
    out, seed, split, indices, difficulty, quality = args
    cv2.setNumThreads(1)  # one core per worker
    results = []
    for index in indices:
        record, img, extras = make_sample(seed, split, index, **difficulty)
        write_jpeg(out, record, img, quality)
        results.append((record, {"size": extras["size"], "faces": len(extras["faces"]),
                                 "manip_detected": _detected(record) if record["fake_image_box"] else None}))
    return results


def _detected(record):
    """True if some mtcnn box overlaps the manipulated box with IoU > 0.5."""
    fx1, fy1, fx2, fy2 = record["fake_image_box"]
    for x1, y1, x2, y2 in record["mtcnn_boxes"]:
        inter = max(0, min(x2, fx2) - max(x1, fx1)) * max(0, min(y2, fy2) - max(y1, fy1))
        union = (x2 - x1) * (y2 - y1) + (fx2 - fx1) * (fy2 - fy1) - inter
        if union > 0 and inter / union > 0.5:
            return True
    return False


def generate_split(out, seed, split, n, workers=1, difficulty=None, quality=90, chunk=200):
    """Generate ``n`` samples of ``split``; ``difficulty``: keyword arguments of ``make_sample`` (strength,
    distractor_trace, face_area; its defaults where absent). Returns (records, per-sample stats) in index order."""
    difficulty = difficulty or {}
    jobs = [(out, seed, split, list(range(s, min(n, s + chunk))), difficulty, quality) for s in range(0, n, chunk)]
    if workers > 1:
        with mp.get_context("spawn").Pool(workers) as pool:
            parts = pool.map(write_chunk, jobs)
    else:
        parts = [write_chunk(job) for job in jobs]
    pairs = [p for part in parts for p in part]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def summarise(records, small):
    """Class mix, box-area histogram, manipulated words per caption, faces per image, detector quality."""
    n = max(1, len(records))
    mix = {c: sum(r["fake_cls"] == c for r in records) for c in CLASS_PROBS}
    edges = [0.0, 0.01, 0.02, 0.05, 0.10, 0.20, 1.01]
    fracs = [(r["fake_image_box"][2] - r["fake_image_box"][0]) * (r["fake_image_box"][3] - r["fake_image_box"][1])
             / (s["size"][0] * s["size"][1]) for r, s in zip(records, small) if r["fake_image_box"]]
    hist = np.histogram(fracs, bins=edges)[0].tolist() if fracs else [0] * (len(edges) - 1)
    words = {}
    for kind in ("text_swap", "text_attribute"):
        counts = [len(r["fake_text_pos"]) for r in records if r["fake_cls"].endswith(kind)]
        words[kind] = {str(c): counts.count(c) for c in sorted(set(counts))}
    detected = [s["manip_detected"] for s in small if s["manip_detected"] is not None]
    faces = [s["faces"] for s in small]
    boxes = [len(r["mtcnn_boxes"]) for r in records]
    return {"samples": len(records),
            "class_mix": {c: {"count": v, "pct": round(100 * v / n, 2), "target_pct": CLASS_PROBS[c]}
                          for c, v in mix.items()},
            "box_area_over_image_area": {"bins": [f"{a:.0%}-{b:.0%}" for a, b in zip(edges, edges[1:])],
                                         "counts": hist, "pct_below_5": round(
                                             100 * float(np.mean(np.array(fracs) < 0.05)), 1) if fracs else 0.0},
            "manipulated_words_per_caption": words,
            "faces_per_image": {str(k): faces.count(k) for k in sorted(set(faces))},
            "mtcnn_boxes_per_image": {str(k): boxes.count(k) for k in sorted(set(boxes))},
            "manipulated_face_detected_pct": round(100 * float(np.mean(detected)), 2) if detected else None,
            "words_per_caption_mean": round(float(np.mean([len(r["text"].split(" ")) for r in records])), 2)
            if records else None}


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output folder (the data root)")
    p.add_argument("--train", type=int, default=2000)
    p.add_argument("--val", type=int, default=300)
    p.add_argument("--test", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pretrain", type=int, default=0,
                   help="N > 0: also write metadata/pretrain.json, N pristine (orig) pairs with their own images "
                        "(ids 1000000+i) for pre-training; the train/val/test bytes do not change")
    p.add_argument("--workers", type=positive_int, default=1, help="processes (output does not depend on it)")
    p.add_argument("--trace-strength", type=float, default=STRENGTH,
                   help="scale of the forgery trace (TRACE x strength; docs/synthetic_benchmark.md)")
    p.add_argument("--distractor-trace", type=float, default=DISTRACTOR_TRACE,
                   help="share of background distractor shapes that carry trace-like blocky noise")
    p.add_argument("--face-area", type=float, nargs=2, default=list(FACE_AREA), metavar=("MIN", "MAX"),
                   help="range of face box area / image area, drawn log-uniformly (then limited by the layout)")
    p.add_argument("--feature-scale", type=float, default=1.0,
                   help="stroke width of the brows and the mouth (the expression) x this (docs/synthetic_benchmark.md)")
    p.add_argument("--jpeg-quality", type=int, default=90)
    p.add_argument("--overwrite", action="store_true",
                   help="if DIR holds a benchmark generated with other settings, delete it and its caches first")
    args = p.parse_args(argv)
    for split in BENCHMARK_SPLITS + ("pretrain",):
        if getattr(args, split) < 0:
            p.error(f"--{split} needs a count >= 0, got {getattr(args, split)}")
    if not args.feature_scale > 0:
        p.error(f"--feature-scale needs a number > 0, got {args.feature_scale}")
    if not 0.0 < args.face_area[0] <= args.face_area[1] < 1.0:
        p.error(f"--face-area needs 0 < MIN <= MAX < 1, got {args.face_area}")
    return args


# What a generation writes into DIR, and the caches the preprocess steps derive from it (scripts/demo.sh).
OUTPUTS = ("DGM4", "metadata", "synthetic_stats.json", "word_kinds.json", "faces.json", "stopwords.json",
           "tokenizer")


def settings(args):
    """Everything the generated bytes depend on (``--workers`` excluded: the output does not depend on it).
    ``splits`` holds "pretrain" only when --pretrain > 0, so folders generated before the option existed (or
    without it) keep their settings; any change of the pretrain count still changes the settings."""
    splits = {s: getattr(args, s) for s in BENCHMARK_SPLITS}
    if args.pretrain > 0:
        splits["pretrain"] = args.pretrain
    out = {"seed": args.seed, "splits": splits,
           "trace_strength": args.trace_strength, "distractor_trace": args.distractor_trace,
           "face_area": list(args.face_area), "jpeg_quality": args.jpeg_quality}
    if args.feature_scale != 1.0:  # recorded only when set, as "pretrain": older folders keep their settings
        out["feature_scale"] = args.feature_scale
    return out


def check_previous(args):
    """Refuse to mix generations: the face / stop-word caches continue by image path, so a benchmark regenerated
    with other settings in the same DIR would silently keep stale candidate boxes. Same settings: the bytes are
    identical and every cache stays valid. Other settings: error, or with --overwrite delete OUTPUTS first."""
    path = os.path.join(args.out, "synthetic_stats.json")
    if not os.path.exists(path):
        return
    with open(path) as f:
        old = json.load(f).get("generation", {}).get("settings")
    new = settings(args)
    if old == new:
        return
    if not args.overwrite:
        raise BadInputError(f"{args.out} holds a benchmark generated with other settings "
                         f"({old or 'not recorded: an older generator'} vs now {new}); "
                         f"pass --overwrite to delete {', '.join(OUTPUTS)} there first, or choose another --out")
    for name in OUTPUTS:
        target = os.path.join(args.out, name)
        if os.path.isdir(target):
            shutil.rmtree(target)
        elif os.path.exists(target):
            os.remove(target)
    print(f"[synthetic] --overwrite: removed the previous generation in {args.out} ({', '.join(OUTPUTS)})")


def main(argv=None):
    args = parse_args(argv)
    check_previous(args)
    stats, all_records, all_small = {}, [], []
    os.makedirs(os.path.join(args.out, "metadata"), exist_ok=True)
    stale = os.path.join(args.out, "metadata", "pretrain.json")
    if args.pretrain == 0 and os.path.exists(stale):  # not from this generation (its settings have no pretrain)
        os.remove(stale)
        print(f"[synthetic] removed {stale}: not part of this generation (--pretrain 0)")
    wall, cpu = time.perf_counter(), time.process_time()
    splits = BENCHMARK_SPLITS + (("pretrain",) if args.pretrain > 0 else ())
    for split in splits:  # pretrain last, with its own split code and ids: the benchmark bytes do not change
        records, small = generate_split(args.out, args.seed, split, getattr(args, split), args.workers,
                                        {"strength": args.trace_strength, "distractor_trace": args.distractor_trace,
                                         "face_area": tuple(args.face_area), "feature_scale": args.feature_scale},
                                        args.jpeg_quality)
        with open(os.path.join(args.out, "metadata", f"{split}.json"), "w") as f:
            json.dump(records, f)
        stats[split] = summarise(records, small)
        if split in BENCHMARK_SPLITS:  # "all" = the benchmark (train + val + test), without the pretrain corpus
            all_records += records
            all_small += small
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    stats["all"] = summarise(all_records, all_small)
    stats["generation"] = speed_report(len(all_records) + args.pretrain, wall, cpu, args)
    with open(os.path.join(args.out, "word_kinds.json"), "w") as f:
        json.dump(word_kinds(), f, indent=1)
    with open(os.path.join(args.out, "synthetic_stats.json"), "w") as f:
        json.dump(stats, f, indent=1)
    gen = stats["generation"]
    what = (f"{gen['samples']} samples ({len(all_records)} train/val/test + {args.pretrain} pristine pre-training "
            f"pairs in metadata/pretrain.json)" if args.pretrain > 0 else f"{gen['samples']} samples")
    print(f"wrote {what} to {args.out} in {wall:.1f} s wall: {gen['samples_per_s_wall']} samples/s "
          f"with {args.workers} worker(s)" + (f"; one core: {gen['samples_per_s_one_core_cpu']} samples/s "
                                              f"(CPU time)" if args.workers == 1 else ""))
    print("class mix (train/val/test): " + ", ".join(f"{c} {v['pct']}%" for c, v in stats["all"]["class_mix"].items()))
    print(f"manipulated boxes below 5% of the image: {stats['all']['box_area_over_image_area']['pct_below_5']}%; "
          f"manipulated face detected: {stats['all']['manipulated_face_detected_pct']}%")
    return stats


def speed_report(n, wall, cpu, args):
    """Wall-clock rate, and with one worker the CPU-time rate (robust to other processes sharing the core)."""
    report = {"samples": n, "seconds_wall": round(wall, 2), "workers": args.workers,
              "samples_per_s_wall": round(n / wall, 1) if wall > 0 else None,
              "settings": settings(args)}
    if args.workers == 1:
        report["seconds_cpu"] = round(cpu, 2)
        report["samples_per_s_one_core_cpu"] = round(n / cpu, 1) if cpu > 0 else None
    return report


if __name__ == "__main__":
    exit_on_user_error(main)  # a bad flag or a folder of another generation: one `error:` line

"""Synthetic pedestrians written in the on-disk format of CUHK-PEDES, ICFG-PEDES or RSTPReid.

The workbook's default dataset. Each identity is a combination of attributes a sentence can name
(gender, build, hair colour and length, upper garment type and colour, lower garment type and
colour, shoe colour, bag type and colour, hat, glasses/scarf). Identities come in *families*: a root
identity plus siblings that differ from it in exactly one attribute, and a family stays in one split,
so the test gallery holds many near-duplicates and a caption that omits the differing attribute is
genuinely ambiguous. Every image is a simple PIL drawing with per-image view (front/back/side),
mirror, stride, scale, position, cluttered background, lighting and optional occlusion; each image
gets two captions from varied templates with synonyms and random attribute subsets/orders.

Writing is deterministic for a seed and idempotent: the folder is built next to its destination,
``manifest.json`` is written last, and the folder is renamed into place; a folder without a
matching manifest (a crash, other parameters) is rebuilt. ``attributes.json`` keeps the
identities' attributes (real datasets have none).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from irra_core.data.parsers import SPECS, canonical_name
from irra_core.io_utils import atomic_write_json

GENERATOR_VERSION = 2  # 2: regions.json; test_images_per_id
MARKER = ".irra_synthetic"

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (205, 30, 35), "orange": (245, 135, 20), "yellow": (240, 215, 40), "green": (35, 150, 55),
    "blue": (30, 75, 205), "purple": (125, 45, 170), "pink": (245, 145, 190), "white": (238, 238, 238),
    "black": (22, 22, 24), "grey": (128, 128, 132), "brown": (120, 72, 30),
}
HAIR = {"black": (18, 16, 16), "brown": (105, 60, 25), "blonde": (228, 196, 110), "grey": (185, 185, 185)}
SKIN = [(240, 200, 170), (205, 155, 115), (140, 95, 65)]
SHOE_COLOURS = ("black", "white", "brown", "red", "blue")
BAG_COLOURS = ("black", "brown", "red", "blue", "grey", "green", "pink", "yellow")
HAT_COLOURS = ("black", "white", "red", "blue", "yellow", "grey")
SCARF_COLOURS = ("red", "blue", "white", "yellow", "green", "purple")

ATTRIBUTE_CHOICES: dict[str, tuple] = {
    "gender": ("man", "woman"),
    "build": ("slim", "heavy"),
    "hair_colour": tuple(HAIR),
    "hair_length": ("short", "long"),
    "upper_type": ("t-shirt", "shirt", "jacket", "coat"),
    "upper_colour": tuple(PALETTE),
    "lower_type": ("trousers", "shorts", "skirt"),
    "lower_colour": tuple(PALETTE),
    "shoes_colour": SHOE_COLOURS,
    "bag": ("none", "backpack", "shoulder bag", "handbag"),
    "bag_colour": BAG_COLOURS,
    "hat": ("none", "cap", "hat"),
    "hat_colour": HAT_COLOURS,
    "accessory": ("none", "glasses", "scarf"),
    "scarf_colour": SCARF_COLOURS,
}
# attributes a sibling may differ in (colours of absent items are not visible, so never mutated alone)
MUTABLE = ("gender", "build", "hair_colour", "hair_length", "upper_type", "upper_colour", "upper_colour",
           "lower_type", "lower_colour", "lower_colour", "shoes_colour", "bag", "bag_colour", "hat",
           "accessory")


# --------------------------------------------------------------------------------------------------
# identities
# --------------------------------------------------------------------------------------------------
def _random_identity(rng: np.random.Generator) -> dict[str, str]:
    def pick(key: str, p: list[float] | None = None) -> str:
        choices = ATTRIBUTE_CHOICES[key]
        return str(choices[rng.choice(len(choices), p=p)])

    a = {k: pick(k) for k in ATTRIBUTE_CHOICES}
    a["bag"] = pick("bag", [0.4, 0.25, 0.2, 0.15])
    a["hat"] = pick("hat", [0.65, 0.2, 0.15])
    a["accessory"] = pick("accessory", [0.6, 0.25, 0.15])
    if a["gender"] == "man" and a["lower_type"] == "skirt" and rng.random() < 0.8:
        a["lower_type"] = "trousers"
    return a


def _key(a: dict[str, str]) -> tuple:
    """The visible, nameable identity: colours of absent items do not count."""
    b = dict(a)
    if b["bag"] == "none":
        b["bag_colour"] = "-"
    if b["hat"] == "none":
        b["hat_colour"] = "-"
    if b["accessory"] != "scarf":
        b["scarf_colour"] = "-"
    return tuple(b[k] for k in ATTRIBUTE_CHOICES)


def _mutate(a: dict[str, str], rng: np.random.Generator) -> dict[str, str]:
    b = dict(a)
    key = MUTABLE[rng.integers(len(MUTABLE))]
    if key == "bag_colour" and b["bag"] == "none":
        key = "bag"
    options = [c for c in ATTRIBUTE_CHOICES[key] if c != a[key]]
    b[key] = str(options[rng.integers(len(options))])
    return b


def make_identities(num_identities: int, seed: int, eval_identities: int | None = None) -> list[dict[str, Any]]:
    """Identities grouped in families (root + siblings differing in one attribute), with a split.

    Args:
        eval_identities: identities in each of val and test (default 20% of ``num_identities`` each;
            whole families, so a split may exceed it by up to 3); the rest train.

    Returns:
        list of dicts: attribute values plus ``family`` (int), ``differs_in`` (attribute name or
        ``None`` for a family root) and ``split`` (train/val/test, ~60/20/20 of identities by default).
    """
    if num_identities < 3:
        raise ValueError(f"num_identities must be >= 3 (one per split), got {num_identities}")
    if eval_identities is not None and not 1 <= eval_identities <= (num_identities - 1) // 2:
        raise ValueError(f"eval_identities={eval_identities} must be between 1 and (num_identities - 1) / 2 "
                         f"(= {(num_identities - 1) // 2}) so that train keeps identities")
    rng = np.random.default_rng([seed, 7001])
    seen: set[tuple] = set()
    families: list[list[dict[str, Any]]] = []
    total = 0
    while total < num_identities:
        size = int(rng.choice([1, 2, 3, 4], p=[0.3, 0.35, 0.25, 0.1]))
        size = min(size, num_identities - total)
        root = _random_identity(rng)
        while _key(root) in seen:
            root = _random_identity(rng)
        seen.add(_key(root))
        fam = [dict(root, differs_in=None)]
        tries = 0
        while len(fam) < size and tries < 50:
            tries += 1
            sib = _mutate(root, rng)
            if _key(sib) in seen:
                continue
            seen.add(_key(sib))
            changed = [k for k in ATTRIBUTE_CHOICES if sib[k] != root[k]]
            fam.append(dict(sib, differs_in=changed[0]))
        families.append(fam)
        total += len(fam)
    order = rng.permutation(len(families))
    n_test = n_val = eval_identities or max(1, round(0.2 * num_identities))
    identities: list[dict[str, Any]] = []
    counts = {"test": 0, "val": 0}
    for fam_no, f in enumerate(order):
        split = "test" if counts["test"] < n_test else "val" if counts["val"] < n_val else "train"
        if split in counts:
            counts[split] += len(families[f])
        for ident in families[f]:
            identities.append(dict(ident, family=int(fam_no), split=split))
    return identities


# --------------------------------------------------------------------------------------------------
# captions
# --------------------------------------------------------------------------------------------------
_NOUNS = {"man": ["man", "man", "male", "guy", "gentleman", "young man"],
          "woman": ["woman", "woman", "female", "lady", "girl", "young woman"]}
_BUILD = {"slim": ["slim", "thin", "slender"], "heavy": ["heavy-set", "stocky", "chubby", "large"]}
_PRON = {"man": "He", "woman": "She"}
_COLOUR_WORDS = {"grey": ["grey", "gray"], "purple": ["purple", "violet"]}
_HAIR_WORDS = {"black": ["black", "dark"], "brown": ["brown"], "blonde": ["blonde", "blond", "yellow"],
               "grey": ["grey", "gray", "white"]}
_UPPER = {"t-shirt": ["t-shirt", "short-sleeved shirt", "tee shirt", "short sleeve top"],
          "shirt": ["long-sleeved shirt", "shirt", "long sleeve top", "sweater"],
          "jacket": ["jacket", "zip-up jacket", "jacket"], "coat": ["long coat", "coat", "overcoat"]}
_LOWER = {"trousers": ["trousers", "pants", "long pants", "trousers"], "shorts": ["shorts", "short pants"],
          "skirt": ["skirt", "skirt"]}
_BAG = {"backpack": ["backpack", "rucksack"], "shoulder bag": ["shoulder bag", "messenger bag", "crossbody bag"],
        "handbag": ["handbag", "purse", "hand bag"]}
_HAT = {"cap": ["cap", "baseball cap"], "hat": ["hat", "sun hat", "wide hat"]}


def _c(colour: str, rng: np.random.Generator) -> str:
    words = _COLOUR_WORDS.get(colour, [colour])
    return words[rng.integers(len(words))]


def _w(words: list[str], rng: np.random.Generator) -> str:
    return words[rng.integers(len(words))]


def _join(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def make_caption(a: dict[str, str], rng: np.random.Generator, mentions: set[str] | None = None) -> str:
    """One varied sentence pair naming a random subset of the identity's attributes.

    Args:
        mentions: if given, receives the names of the attributes the caption states.
    """
    said = mentions if mentions is not None else set()
    wear = _worn_items(a, rng, said)
    hair, bag = _hair_and_bag(a, rng, said)
    subject, pron = _subject(a, rng, said)
    return _sentences(subject, pron, wear, hair, bag, rng)


def _worn_items(a: dict[str, str], rng: np.random.Generator, said: set[str]) -> list[str]:
    """The garments, shoes, hat and accessories a caption names, in a random order."""
    wear: list[str] = []
    if rng.random() < 0.95:
        wear.append(_article(f"{_c(a['upper_colour'], rng)} {_w(_UPPER[a['upper_type']], rng)}"))
        said.update(("upper_colour", "upper_type"))
    if rng.random() < 0.95:
        lower = f"{_c(a['lower_colour'], rng)} {_w(_LOWER[a['lower_type']], rng)}"
        wear.append(_article(lower) if a["lower_type"] == "skirt" else lower)
        said.update(("lower_colour", "lower_type"))
    if rng.random() < 0.5:
        wear.append(f"{_c(a['shoes_colour'], rng)} {_w(['shoes', 'sneakers', 'shoes'], rng)}")
        said.add("shoes_colour")
    if a["hat"] != "none" and rng.random() < 0.8:
        wear.append(_article(f"{_c(a['hat_colour'], rng)} {_w(_HAT[a['hat']], rng)}"))
        said.update(("hat", "hat_colour"))
    if a["accessory"] == "glasses" and rng.random() < 0.7:
        wear.append(_w(["glasses", "glasses", "eyeglasses", "spectacles"], rng))
        said.add("accessory")
    if a["accessory"] == "scarf" and rng.random() < 0.7:
        wear.append(_article(f"{_c(a['scarf_colour'], rng)} scarf"))
        said.update(("accessory", "scarf_colour"))
    order = rng.permutation(len(wear))
    return [wear[i] for i in order]


def _hair_and_bag(a: dict[str, str], rng: np.random.Generator, said: set[str]) -> tuple[str | None, str | None]:
    """The hair phrase and the bag phrase of a caption (None: not named)."""
    hair = None
    if rng.random() < 0.7:
        hair = f"{a['hair_length']} {_w(_HAIR_WORDS[a['hair_colour']], rng)} hair"
        said.update(("hair_length", "hair_colour"))
    bag = None
    if a["bag"] != "none" and rng.random() < 0.85:
        bag = _article(f"{_c(a['bag_colour'], rng)} {_w(_BAG[a['bag']], rng)}")
        said.update(("bag", "bag_colour"))
    elif a["bag"] == "none" and rng.random() < 0.1:
        bag = "no bag"
        said.add("bag")
    return hair, bag


def _subject(a: dict[str, str], rng: np.random.Generator, said: set[str]) -> tuple[str, str]:
    """The caption's subject ("A tall woman") and the pronoun of its second sentence."""
    gendered = rng.random() < 0.9
    noun = _w(_NOUNS[a["gender"]], rng) if gendered else _w(["person", "pedestrian"], rng)
    if gendered:
        said.add("gender")
    if rng.random() < 0.45:
        noun = f"{_w(_BUILD[a['build']], rng)} {noun}"
        said.add("build")
    subject = f"{_w(['A', 'The', 'This'], rng)} {noun}"
    return subject, (_PRON[a["gender"]] if gendered else "The person")


def _sentences(subject: str, pron: str, wear: list[str], hair: str | None, bag: str | None,
               rng: np.random.Generator) -> str:
    """The caption's one or two sentences from its parts, in one of three styles."""
    split_at = int(rng.integers(1, len(wear) + 1)) if wear else 0
    first, second = wear[:split_at], wear[split_at:]
    verb = _w(["is wearing", "wears", "is dressed in", "has on"], rng)
    style = rng.integers(3)
    if style == 0 and hair:
        s1 = f"{subject} with {hair} {verb} {_join(first)}." if first else f"{subject} has {hair}."
        hair = None
    elif style == 1 and first:
        s1 = f"{subject} in {_join(first)}."
    else:
        s1 = f"{subject} {verb} {_join(first)}." if first else f"{subject} is walking."
    rest: list[str] = []
    if hair:
        rest.append(f"has {hair}")
    if second:
        rest.append(f"{_w(['wears', 'is wearing', 'also wears'], rng)} {_join(second)}")
    if bag:
        rest.append(f"{_w(['carries', 'is carrying', 'has'], rng)} {bag}")
    if not rest:
        return s1
    rest = [rest[i] for i in rng.permutation(len(rest))]
    return f"{s1} {pron} {_join(rest)}."


def text_ambiguity(identities: list[dict[str, Any]], split: str = "test", captions_per_id: int = 8,
                   seed: int = 0) -> dict[str, float]:
    """How well a perfect attribute reader could retrieve with these captions (a difficulty ceiling).

    For fresh captions of each identity of ``split``, counts the identities of that split that
    agree with every attribute the caption states. A model that reads captions and images
    perfectly but breaks ties at random reaches t2i R1 = mean(1 / consistent identities).

    Returns:
        ``{"r1_ceiling": percent, "unique_fraction": share of captions naming exactly one
        identity, "mean_consistent": mean number of consistent identities}``.
    """
    pool = [i for i in identities if i["split"] == split]
    rng = np.random.default_rng([seed, 7003])
    inv, unique, counts = [], 0, []
    for ident in pool:
        for _ in range(captions_per_id):
            said: set[str] = set()
            make_caption(ident, rng, said)
            n = sum(all(other[k] == ident[k] for k in said) for other in pool)
            inv.append(1.0 / n)
            unique += n == 1
            counts.append(n)
    return {"r1_ceiling": 100.0 * float(np.mean(inv)), "unique_fraction": unique / len(inv),
            "mean_consistent": float(np.mean(counts))}


# --------------------------------------------------------------------------------------------------
# rendering
# --------------------------------------------------------------------------------------------------
class _Draw:
    """ImageDraw with boxes given in any corner order (mirrored poses produce reversed boxes)."""

    def __init__(self, img: Image.Image) -> None:
        self._d = ImageDraw.Draw(img)
        self.polygon, self.line = self._d.polygon, self._d.line

    @staticmethod
    def _box(xy: list[float]) -> list[float]:
        x0, y0, x1, y1 = xy
        return [min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)]

    def rectangle(self, xy: list[float], **kw: Any) -> None:
        self._d.rectangle(self._box(xy), **kw)

    def rounded_rectangle(self, xy: list[float], **kw: Any) -> None:
        self._d.rounded_rectangle(self._box(xy), **kw)

    def ellipse(self, xy: list[float], **kw: Any) -> None:
        self._d.ellipse(self._box(xy), **kw)

    def chord(self, xy: list[float], start: float, end: float, **kw: Any) -> None:
        self._d.chord(self._box(xy), start, end, **kw)


def _shade(rgb: tuple[int, int, int], f: float) -> tuple[int, int, int]:
    return tuple(int(max(0, min(255, round(v * f)))) for v in rgb)  # type: ignore[return-value]


REGIONS = ("hair", "hat", "glasses", "scarf", "upper", "lower", "shoes", "bag")


def render_person(a: dict[str, Any], rng: np.random.Generator, size: tuple[int, int] | None = None,
                  regions: dict[str, list[float]] | None = None) -> Image.Image:
    """Draw one image of identity ``a``; all nuisance factors come from ``rng``.

    Args:
        size: (H, W); default a random size around 208 x 80.
        regions: if given, receives the bounding box of each drawn part named in :data:`REGIONS`
            (``upper`` = torso and sleeves, ``lower`` = trousers/shorts/skirt and hips, ``bag`` includes
            its strap) as ``[x0, y0, x1, y1]`` fractions of the image width and height (after the
            mirror flip; clipped to [0, 1]). Parts later covered by others or by the occluder keep
            their full box. Passing it does not change the image.
    """
    boxes: dict[str, list[float]] = {}

    def note(name: str, xy: Any) -> None:
        pts = np.asarray(xy, dtype=float).reshape(-1, 2)
        box = [pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max()]
        old = boxes.get(name)
        boxes[name] = box if old is None else [min(old[0], box[0]), min(old[1], box[1]),
                                                max(old[2], box[2]), max(old[3], box[3])]

    if size is None:
        h = int(rng.integers(176, 241))
        size = (h, int(round(h * rng.uniform(0.36, 0.44))))
    H, W = size
    # background: a vertical gradient between two muted colours plus random clutter blocks
    top, bottom = rng.integers(60, 200, 3), rng.integers(40, 170, 3)
    t = np.linspace(0, 1, H)[:, None, None]
    bg = (top[None, None] * (1 - t) + bottom[None, None] * t) * np.ones((1, W, 1))
    img = Image.fromarray(bg.astype(np.uint8))
    d = _Draw(img)
    for _ in range(int(rng.integers(3, 9))):
        x0, y0 = rng.uniform(-0.2 * W, W), rng.uniform(-0.1 * H, H)
        w, h = rng.uniform(0.1, 0.6) * W, rng.uniform(0.05, 0.4) * H
        col = tuple(int(v) for v in (0.5 * rng.integers(0, 256, 3) + 0.5 * bg[min(H - 1, max(0, int(y0))), 0]))
        (d.ellipse if rng.random() < 0.4 else d.rectangle)([x0, y0, x0 + w, y0 + h], fill=col)

    P = H * rng.uniform(0.78, 0.94)  # person height in pixels
    cx = W / 2 + rng.uniform(-0.08, 0.08) * W
    y0 = rng.uniform(0.02 * H, max(0.03 * H, H - P - 0.02 * H))
    view = str(rng.choice(["front", "back", "side"], p=[0.45, 0.35, 0.2]))
    side = view == "side"
    skin = SKIN[a["skin"]]
    upper, lower = PALETTE[a["upper_colour"]], PALETTE[a["lower_colour"]]
    hair = HAIR[a["hair_colour"]]
    bw = (0.9 if a["build"] == "slim" else 1.2) * (0.6 if side else 1.0)
    sh = P * (0.13 if a["gender"] == "man" else 0.105) * bw  # half shoulder width
    wa = P * (0.105 if a["gender"] == "man" else 0.08) * bw  # half waist width
    Y = lambda f: y0 + f * P  # noqa: E731 - local shorthand for body-relative heights
    stride = rng.uniform(0.0, 0.07) * P * (1.6 if side else 1.0)
    leg_w = P * 0.062 * (0.9 if a["build"] == "slim" else 1.15)

    # long hair behind the head and shoulders
    hr = P * 0.065
    hy = Y(0.075)
    if a["hair_length"] == "long":
        d.rectangle([cx - hr * 1.05, hy, cx + hr * 1.05, Y(0.26 if view != "front" else 0.22)], fill=hair)
        note("hair", [cx - hr * 1.05, hy, cx + hr * 1.05, Y(0.26 if view != "front" else 0.22)])
    # backpack seen from the side sits behind the torso
    bag_col = PALETTE[a["bag_colour"]]
    if a["bag"] == "backpack" and side:
        d.rectangle([cx - sh - P * 0.07, Y(0.17), cx - sh + P * 0.02, Y(0.40)], fill=bag_col)
        note("bag", [cx - sh - P * 0.07, Y(0.17), cx - sh + P * 0.02, Y(0.40)])
    # legs (two, spread by the stride)
    for sgn in (-1, 1):
        lx = cx + sgn * (wa * 0.5 + stride * 0.5)
        top_y, foot_y = Y(0.49), Y(0.93)
        d.polygon([(cx + sgn * wa * 0.45 - leg_w * 0.5, top_y), (cx + sgn * wa * 0.45 + leg_w * 0.5, top_y),
                   (lx + leg_w * 0.5, foot_y), (lx - leg_w * 0.5, foot_y)], fill=skin)
        if a["lower_type"] in ("trousers", "shorts"):
            end = 0.93 if a["lower_type"] == "trousers" else 0.66
            ex = cx + sgn * wa * 0.45 + (lx - cx - sgn * wa * 0.45) * (end - 0.49) / 0.44
            leg = [(cx + sgn * wa * 0.45 - leg_w * 0.55, top_y), (cx + sgn * wa * 0.45 + leg_w * 0.55, top_y),
                   (ex + leg_w * 0.55, Y(end)), (ex - leg_w * 0.55, Y(end))]
            d.polygon(leg, fill=lower)
            note("lower", leg)
        shoe = [lx - leg_w * 0.8 + (leg_w * 0.3 if side else 0), Y(0.915),
                lx + leg_w * 0.8 + (leg_w * 0.4 if side else 0), Y(0.975)]
        d.ellipse(shoe, fill=PALETTE[a["shoes_colour"]])
        note("shoes", shoe)
    # hips / skirt
    if a["lower_type"] == "skirt":
        d.polygon([(cx - wa, Y(0.47)), (cx + wa, Y(0.47)), (cx + wa * 1.7, Y(0.69)), (cx - wa * 1.7, Y(0.69))], fill=lower)
        note("lower", [cx - wa * 1.7, Y(0.47), cx + wa * 1.7, Y(0.69)])
    else:
        d.rectangle([cx - wa, Y(0.46), cx + wa, Y(0.53)], fill=lower)
        note("lower", [cx - wa, Y(0.46), cx + wa, Y(0.53)])
    # arms with sleeves (t-shirts show the forearm)
    swing = rng.uniform(-0.04, 0.04) * P
    arm_w = P * 0.045
    for sgn in (-1, 1):
        ax = cx + sgn * (sh + arm_w * 0.35) * (0.5 if side else 1.0)
        hand = (ax + sgn * swing * 0.3 + swing, Y(0.52))
        d.line([(ax, Y(0.17)), hand], fill=skin, width=max(2, int(arm_w)))
        sleeve_end = 0.28 if a["upper_type"] == "t-shirt" else 0.5
        sx = ax + (hand[0] - ax) * (sleeve_end - 0.17) / 0.35
        d.line([(ax, Y(0.17)), (sx, Y(sleeve_end))], fill=upper, width=max(2, int(arm_w * 1.15)))
        half = max(2, int(arm_w * 1.15)) / 2
        note("upper", [ax - half, Y(0.17), ax + half, Y(0.17), sx - half, Y(sleeve_end), sx + half, Y(sleeve_end)])
        d.ellipse([hand[0] - arm_w * 0.6, hand[1] - arm_w * 0.6, hand[0] + arm_w * 0.6, hand[1] + arm_w * 0.6], fill=skin)
    # torso (a coat reaches the thighs)
    bottom_f = 0.68 if a["upper_type"] == "coat" else 0.49
    hem = wa * (1.35 if a["upper_type"] == "coat" else 1.0)
    d.polygon([(cx - sh, Y(0.155)), (cx + sh, Y(0.155)), (cx + hem, Y(bottom_f)), (cx - hem, Y(bottom_f))], fill=upper)
    note("upper", [cx - max(sh, hem), Y(0.155), cx + max(sh, hem), Y(bottom_f)])
    if a["upper_type"] == "jacket" and view == "front":
        d.line([(cx, Y(0.16)), (cx, Y(0.49))], fill=_shade(upper, 0.55), width=max(1, int(P * 0.012)))
        d.polygon([(cx - sh * 0.5, Y(0.15)), (cx, Y(0.22)), (cx + sh * 0.5, Y(0.15))], fill=_shade(upper, 0.7))
    if a["upper_type"] == "coat" and view == "front":
        d.line([(cx, Y(0.2)), (cx, Y(bottom_f))], fill=_shade(upper, 0.6), width=max(1, int(P * 0.01)))
    # bags
    if a["bag"] == "backpack" and view == "back":
        d.rounded_rectangle([cx - sh * 0.8, Y(0.18), cx + sh * 0.8, Y(0.42)], radius=P * 0.02, fill=bag_col)
        note("bag", [cx - sh * 0.8, Y(0.18), cx + sh * 0.8, Y(0.42)])
    elif a["bag"] == "backpack" and view == "front":
        for sgn in (-1, 1):
            d.line([(cx + sgn * sh * 0.55, Y(0.16)), (cx + sgn * sh * 0.6, Y(0.36))], fill=bag_col,
                   width=max(2, int(P * 0.025)))
            d.rectangle([cx + sgn * sh, Y(0.2), cx + sgn * (sh + P * 0.025), Y(0.38)], fill=bag_col)
            note("bag", [cx + sgn * sh, Y(0.2), cx + sgn * (sh + P * 0.025), Y(0.38)])
    elif a["bag"] == "shoulder bag":
        sgn = 1 if rng.random() < 0.5 else -1
        d.line([(cx - sgn * sh * 0.7, Y(0.16)), (cx + sgn * wa * 1.1, Y(0.44))], fill=bag_col, width=max(2, int(P * 0.018)))
        d.rectangle([cx + sgn * wa * 0.8, Y(0.42), cx + sgn * (wa * 0.8 + P * 0.1), Y(0.52)], fill=bag_col)
        note("bag", [cx + sgn * wa * 0.8, Y(0.42), cx + sgn * (wa * 0.8 + P * 0.1), Y(0.52)])
    elif a["bag"] == "handbag":
        sgn = 1 if rng.random() < 0.5 else -1
        hx = cx + sgn * (sh + arm_w)
        d.rectangle([hx - P * 0.045, Y(0.50), hx + P * 0.045, Y(0.6)], fill=bag_col)
        note("bag", [hx - P * 0.045, Y(0.50), hx + P * 0.045, Y(0.6)])
    # neck, head, face details
    d.rectangle([cx - P * 0.022, Y(0.12), cx + P * 0.022, Y(0.16)], fill=skin)
    d.ellipse([cx - hr * (0.85 if side else 1.0), hy - hr, cx + hr * (0.85 if side else 1.0), hy + hr], fill=skin)
    if view == "back":
        d.ellipse([cx - hr * 1.02, hy - hr * 1.05, cx + hr * 1.02, hy + hr * 0.95], fill=hair)
        note("hair", [cx - hr * 1.02, hy - hr * 1.05, cx + hr * 1.02, hy + hr * 0.95])
    else:
        d.chord([cx - hr * 1.05, hy - hr * 1.1, cx + hr * 1.05, hy + hr * 0.7], 180, 360, fill=hair)
        note("hair", [cx - hr * 1.05, hy - hr * 1.1, cx + hr * 1.05, hy - hr * 0.2])
        if side:
            d.ellipse([cx - hr * 0.95, hy - hr * 0.8, cx + hr * 0.1, hy + hr * 0.5], fill=hair)
            note("hair", [cx - hr * 0.95, hy - hr * 0.8, cx + hr * 0.1, hy + hr * 0.5])
    if a["accessory"] == "glasses" and view != "back":
        gx = (cx, cx + hr * 0.6) if side else (cx - hr * 0.8, cx + hr * 0.8)
        d.rectangle([gx[0], hy - hr * 0.15, gx[1], hy + hr * 0.15], fill=(15, 15, 15))
        note("glasses", [gx[0], hy - hr * 0.15, gx[1], hy + hr * 0.15])
    if a["accessory"] == "scarf":
        d.rectangle([cx - sh * 0.6, Y(0.125), cx + sh * 0.6, Y(0.185)], fill=PALETTE[a["scarf_colour"]])
        note("scarf", [cx - sh * 0.6, Y(0.125), cx + sh * 0.6, Y(0.185)])
    if a["hat"] != "none":
        hat_col = PALETTE[a["hat_colour"]]
        if a["hat"] == "cap":
            d.chord([cx - hr * 1.08, hy - hr * 1.25, cx + hr * 1.08, hy + hr * 0.5], 180, 360, fill=hat_col)
            note("hat", [cx - hr * 1.08, hy - hr * 1.25, cx + hr * 1.08, hy - hr * 0.375])
            if view != "back":
                bx = cx + (hr * 1.6 if side else 0)
                d.rectangle([bx - hr * (0.5 if side else 1.1), hy - hr * 0.45, bx + hr * (0.2 if side else 1.1),
                             hy - hr * 0.25], fill=_shade(hat_col, 0.8))
                note("hat", [bx - hr * (0.5 if side else 1.1), hy - hr * 0.45, bx + hr * (0.2 if side else 1.1),
                             hy - hr * 0.25])
        else:
            d.rectangle([cx - hr * 0.85, hy - hr * 1.6, cx + hr * 0.85, hy - hr * 0.4], fill=hat_col)
            d.rectangle([cx - hr * 1.7, hy - hr * 0.55, cx + hr * 1.7, hy - hr * 0.3], fill=hat_col)
            note("hat", [cx - hr * 1.7, hy - hr * 1.6, cx + hr * 1.7, hy - hr * 0.3])
    # partial occlusion by a foreground block (a pole, a passer-by, a car bonnet)
    if rng.random() < 0.2:
        col = tuple(int(v) for v in rng.integers(30, 220, 3))
        if rng.random() < 0.5:
            x = rng.uniform(0, W)
            d.rectangle([x, 0, x + rng.uniform(0.08, 0.2) * W, H], fill=col)
        else:
            yb = rng.uniform(0.72, 0.88) * H
            d.rectangle([rng.uniform(-0.3, 0.3) * W, yb, W * rng.uniform(0.6, 1.3), H], fill=col)
    flip = rng.random() < 0.5
    if flip:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if regions is not None:
        for name in REGIONS:
            if name in boxes:
                x0, y0, x1, y1 = boxes[name]
                if flip:
                    x0, x1 = W - x1, W - x0
                regions[name] = [round(float(np.clip(v / n, 0.0, 1.0)), 4) for v, n in
                                 ((x0, W), (y0, H), (x1, W), (y1, H))]
    # lighting: global brightness, a colour cast and sensor noise
    arr = np.asarray(img, dtype=np.float32)
    arr = arr * rng.uniform(0.8, 1.15) + rng.uniform(-12, 12, 3) + rng.normal(0, 4.0, arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


# --------------------------------------------------------------------------------------------------
# writing a dataset
# --------------------------------------------------------------------------------------------------
def _format_ids(identities: list[dict[str, Any]], fmt: str) -> None:
    """Assign raw ids so the format's parser yields contiguous train pids (CUHK: id-1, others: id)."""
    order = {"train": 0, "val": 1, "test": 2}
    start = 1 if fmt == "CUHK-PEDES" else 0
    for n, ident in enumerate(sorted(identities, key=lambda i: order[i["split"]])):
        ident["id"] = start + n
    identities.sort(key=lambda i: i["id"])


def synthetic_params(fmt: str, num_identities: int, images_per_id: int, seed: int,
                     captions_per_image: int = 2, test_images_per_id: int | None = None,
                     eval_identities: int | None = None,
                     test_captions_per_image: int | None = None) -> dict[str, Any]:
    """The parameters a generated folder's ``manifest.json`` records (a folder with others is rebuilt)."""
    params = {"format": canonical_name(fmt), "num_identities": int(num_identities),
              "images_per_id": int(images_per_id), "seed": int(seed), "captions_per_image": int(captions_per_image),
              "test_images_per_id": int(test_images_per_id or images_per_id),
              "eval_identities": int(eval_identities or 0), "version": GENERATOR_VERSION}
    if test_captions_per_image is not None:  # recorded only when set: folders written before keep their manifest
        params["test_captions_per_image"] = int(test_captions_per_image)
    return params


def is_complete(root: str | Path, params: dict[str, Any]) -> bool:
    """True when ``root`` holds a finished dataset generated with ``params``."""
    manifest = Path(root) / "manifest.json"
    try:
        return json.loads(manifest.read_text())["params"] == params
    except (OSError, ValueError, KeyError):
        return False


def make_synthetic_pedes(root: str | Path, fmt: str = "CUHK-PEDES", num_identities: int = 400,
                         images_per_id: int = 4, seed: int = 0, captions_per_image: int = 2,
                         force: bool = False, test_images_per_id: int | None = None,
                         eval_identities: int | None = None, test_captions_per_image: int | None = None) -> Path:
    """Write a synthetic dataset in ``fmt``'s on-disk layout into the folder ``root``.

    The folder becomes a dataset folder: ``<annotation file>``, ``imgs/``, ``attributes.json``
    (per-identity attributes, family and split), ``regions.json`` (``{"images": {relative image path:
    {part: [x0, y0, x1, y1] fractions}}}``, the boxes of :func:`render_person`, for scoring attention)
    and ``manifest.json`` (written last). Calling it
    again with the same arguments returns at once; a folder without a matching manifest that this
    generator made is rebuilt. ICFG-PEDES has no val split: its val identities join train.

    Args:
        root: the dataset folder to create (pass it to ``build_dataset(fmt, root)``).
        fmt: ``CUHK-PEDES`` | ``ICFG-PEDES`` | ``RSTPReid``.
        num_identities: identities over all splits (~60/20/20 train/val/test by family).
        images_per_id: images per identity.
        seed: everything (identities, images, captions) is a function of it.
        captions_per_image: captions per image (CUHK-PEDES has two).
        force: rebuild even when complete.
        test_images_per_id: images per test identity (default ``images_per_id``); ICFG-PEDES's test split
            has ~20 images per identity, which sets how many identities share an evaluation batch.
        eval_identities: identities in each of val and test (default 20% each): more training identities
            (more attribute combinations) without a larger, more ambiguous test gallery.
        test_captions_per_image: captions per test image (default ``captions_per_image``). ICFG-PEDES has one
            caption per image, so its identity-ordered query batches line up with its gallery batches (caption
            k describes image k): with 1 the synthetic test split has that structure, which decides how much PHP's
            batch-axis EFP inflates the test numbers (notebook 40, SPEC §2.11).

    Returns:
        ``root`` as a resolved Path.
    """
    fmt = canonical_name(fmt)
    root = Path(root).expanduser().resolve()
    params = synthetic_params(fmt, num_identities, images_per_id, seed, captions_per_image, test_images_per_id,
                              eval_identities, test_captions_per_image)
    if (images_per_id < 1 or captions_per_image < 1 or params["test_images_per_id"] < 1
            or params.get("test_captions_per_image", 1) < 1):
        raise ValueError("images_per_id, test_images_per_id, captions_per_image and test_captions_per_image must "
                         "be >= 1")
    if not force and is_complete(root, params):
        return root
    if root.exists() and any(root.iterdir()) and not (root / MARKER).exists():
        raise FileExistsError(f"{root} exists, is not empty and was not written by the synthetic generator; "
                              f"refusing to overwrite it: choose another folder")
    tmp = root.parent / f".{root.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        _write(tmp, params)
        if is_complete(root, params):  # another process (a DDP rank) finished first: keep its copy
            return root
        if root.exists():
            shutil.rmtree(root)  # a stale or half-written synthetic folder (it has our marker)
        try:
            os.replace(tmp, root)
        except OSError:
            if not is_complete(root, params):  # another process finished first: keep its copy
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def _write(folder: Path, params: dict[str, Any]) -> None:
    fmt, seed = params["format"], params["seed"]
    spec = SPECS[fmt]
    folder.mkdir(parents=True)
    (folder / MARKER).write_text("written by irra_core.data.synthetic\n")
    identities = make_identities(params["num_identities"], seed, params["eval_identities"] or None)
    if fmt == "ICFG-PEDES":  # ICFG has no val split
        for ident in identities:
            if ident["split"] == "val":
                ident["split"] = "train"
    skin_rng = np.random.default_rng([seed, 7002])
    for ident in identities:
        ident["skin"] = int(skin_rng.integers(len(SKIN)))
    _format_ids(identities, fmt)
    entries, regions = [], {}
    for ident in identities:
        count = params["test_images_per_id"] if ident["split"] == "test" else params["images_per_id"]
        for k in range(count):
            rng = np.random.default_rng([seed, ident["id"], k, 1])
            rel = f"{ident['split']}/{ident['id']:05d}_{k:02d}.jpg"
            path = folder / "imgs" / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            regions[rel] = {}
            render_person(ident, rng, regions=regions[rel]).save(path, format="JPEG", quality=90)
            n_caps = params["captions_per_image"]
            if ident["split"] == "test":
                n_caps = params.get("test_captions_per_image", n_caps)
            caps = [make_caption(ident, rng) for _ in range(n_caps)]
            entries.append({"split": ident["split"], "id": ident["id"], spec.path_field: rel, "captions": caps})
    ann = folder / spec.annotation_files[0]
    atomic_write_json(ann, entries)
    attrs = [{k: v for k, v in ident.items()} for ident in identities]
    atomic_write_json(folder / "attributes.json", {"format": fmt, "identities": attrs})
    atomic_write_json(folder / "regions.json", {"format": fmt, "parts": list(REGIONS), "images": regions})
    digest = hashlib.sha256(ann.read_bytes()).hexdigest()
    atomic_write_json(folder / "manifest.json", {
        "generator": "irra_core.data.synthetic", "params": params, "annotation_file": ann.name,
        "annotation_sha256": digest, "images": len(entries),
        "identities": {s: sum(i["split"] == s for i in identities) for s in ("train", "val", "test")}})


def synthetic_dir(root: str | Path, fmt: str, num_identities: int, images_per_id: int, seed: int,
                  test_images_per_id: int | None = None, eval_identities: int | None = None,
                  test_captions_per_image: int | None = None) -> Path:
    """``<root>/synthetic/<fmt>-n<ids>-k<imgs>-s<seed>`` (with ``-t<test imgs>`` when the test split has its
    own count, ``-e<ids>`` when val/test have a set size, ``-c<captions>`` when test images have their own
    caption count), the folder :func:`prepare_dataset` uses."""
    test = f"-t{test_images_per_id}" if test_images_per_id and test_images_per_id != images_per_id else ""
    test += f"-e{eval_identities}" if eval_identities else ""
    test += f"-c{test_captions_per_image}" if test_captions_per_image else ""
    return Path(root) / "synthetic" / f"{canonical_name(fmt)}-n{num_identities}-k{images_per_id}{test}-s{seed}"


def load_regions(img_path: str | Path) -> dict[str, list[float]]:
    """The part boxes of one synthetic image (``regions.json`` of its dataset folder), ``{part: [x0, y0, x1,
    y1]}`` as fractions of width and height; parts not drawn are absent.

    Raises:
        FileNotFoundError: the image is not inside a synthetic dataset folder written with regions
            (generator version >= 2: regenerate it with ``python -m irra_core.data synth``).
        KeyError: the folder's ``regions.json`` has no entry for the image.
    """
    path = Path(img_path).resolve()
    for parent in path.parents:
        if parent.name == "imgs":
            folder, rel = parent.parent, path.relative_to(parent).as_posix()
            break
    else:
        raise FileNotFoundError(f"{img_path} is not under an imgs/ folder of a synthetic dataset")
    table = _REGIONS_CACHE.get(folder)
    if table is None:
        file = folder / "regions.json"
        if not file.exists():
            raise FileNotFoundError(f"{file} does not exist: the synthetic set predates region annotations; "
                                    f"delete {folder} and generate it again")
        table = _REGIONS_CACHE[folder] = json.loads(file.read_text())["images"]
    if rel not in table:
        raise KeyError(f"{folder / 'regions.json'} has no entry for {rel}")
    return table[rel]


_REGIONS_CACHE: dict[Path, dict] = {}

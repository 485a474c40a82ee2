"""The shapes world: vocabulary, specs and a seeded sampler of scenes and captions.

A *prompt spec* says what a caption claims (unmentioned attributes are ``None``);
a *scene* is the full truth of one rendered image. The oracle checks an image
against a prompt spec, so the same check serves renders and any generator's output.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field, replace
from typing import Any

# Palette in sRGB. Object colors and backgrounds are disjoint and far apart in
# Lab, so a blurred or slightly shifted pixel still has one nearest name.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (250, 140, 20),
    "yellow": (245, 220, 30),
    "green": (30, 160, 50),
    "cyan": (30, 200, 220),
    "blue": (30, 60, 210),
    "purple": (130, 40, 170),
    "pink": (250, 130, 190),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "gray": (128, 128, 128),
    "beige": (225, 205, 160),
    "brown": (100, 60, 30),
}
# Silhouettes that stay distinct after blur (CALIBRATION.md: not circle/hexagon/diamond).
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "ring", "star")
SIZES: dict[str, float] = {"small": 0.22, "large": 0.40}  # bounding-box side / image side
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
COUNT_WORDS: dict[int, str] = {1: "one", 2: "two", 3: "three"}
CATEGORIES: tuple[str, ...] = (
    "single_object",
    "two_object",
    "counting",
    "colors",
    "position",
    "color_attr",
    "background",
)
# (color, shape) pairs never rendered in the train/test splits: compositional prompts.
HELD_OUT: frozenset[tuple[str, str]] = frozenset(
    {
        ("red", "star"),
        ("blue", "triangle"),
        ("green", "ring"),
        ("yellow", "cross"),
        ("purple", "circle"),
        ("orange", "square"),
    }
)
SPLITS: tuple[str, ...] = ("train", "test", "compositional")
_SPLIT_STREAM = {"train": 0, "test": 1, "compositional": 2}


@dataclass(frozen=True)
class ObjectSpec:
    """A group of ``count`` identical objects; ``None`` fields are unconstrained."""

    shape: str
    color: str | None = None
    size: str | None = None
    count: int = 1


@dataclass(frozen=True)
class PromptSpec:
    """What a caption claims. ``relation`` is (index a, relation, index b) over ``objects``."""

    category: str
    objects: tuple[ObjectSpec, ...]
    background: str | None = None
    relation: tuple[int, str, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["objects"] = [asdict(o) for o in self.objects]
        d["relation"] = list(self.relation) if self.relation else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PromptSpec:
        rel = d.get("relation")
        return cls(
            category=d["category"],
            objects=tuple(ObjectSpec(**o) for o in d["objects"]),
            background=d.get("background"),
            relation=(int(rel[0]), str(rel[1]), int(rel[2])) if rel else None,
        )


@dataclass(frozen=True)
class PlacedObject:
    """One drawn object; (x, y) is its centre as a fraction of the image side."""

    shape: str
    color: str
    size: str
    x: float
    y: float


@dataclass(frozen=True)
class Scene:
    background: str
    objects: tuple[PlacedObject, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"background": self.background, "objects": [asdict(o) for o in self.objects]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scene:
        return cls(d["background"], tuple(PlacedObject(**o) for o in d["objects"]))


@dataclass
class Sample:
    key: str
    caption: str
    spec: PromptSpec
    scene: Scene
    split: str = "train"
    meta: dict[str, Any] = field(default_factory=dict)


def _an(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _plural(shape: str) -> str:
    return shape + ("es" if shape.endswith("s") else "s")


def object_phrase(obj: ObjectSpec, rng: random.Random | None = None) -> str:
    """Noun phrase for a group: 'a small red circle', 'three stars'."""
    words = [w for w in (obj.size, obj.color) if w]
    if obj.count == 1:
        return _an(" ".join([*words, obj.shape]))
    return " ".join([COUNT_WORDS[obj.count], *words, _plural(obj.shape)])


_REL_PHRASES = {
    "left of": ("to the left of", "left of"),
    "right of": ("to the right of", "right of"),
    "above": ("above",),
    "below": ("below", "under"),
}
_OPENERS = ("", "", "a picture of ", "an image of ", "a drawing of ")


def caption_for(spec: PromptSpec, rng: random.Random) -> str:
    """One of several phrasings of ``spec``; every attribute in the spec appears in the text."""
    parts = [object_phrase(o) for o in spec.objects]
    if spec.relation:
        a, rel, b = spec.relation
        body = f"{parts[a]} {rng.choice(_REL_PHRASES[rel])} {parts[b]}"
    else:
        body = " and ".join(parts)
    opener = rng.choice(_OPENERS)
    if spec.background is None:
        return opener + body
    style = rng.randrange(3)
    if style == 0:
        return f"{opener}{body} on {_an(spec.background)} background"
    if style == 1:
        return f"{body}, {spec.background} background"
    return f"{_an(spec.background)} background with {body}"


def _allowed(color: str, shape: str, split: str) -> bool:
    return ((color, shape) in HELD_OUT) == (split == "compositional")


def _pick_colored(rng: random.Random, split: str, shape: str | None = None) -> tuple[str, str]:
    """A (color, shape) pair valid for the split's combination rule."""
    pairs = [(c, s) for c in COLORS for s in SHAPES if (shape is None or s == shape) and _allowed(c, s, split)]
    return rng.choice(pairs)


def _free_color(rng: random.Random, shape: str) -> str:
    """A color for an object whose color the caption does not state (never a held-out pair)."""
    return rng.choice([c for c in COLORS if (c, shape) not in HELD_OUT])


def sample_spec(rng: random.Random, category: str, split: str = "train") -> PromptSpec:
    """Draw a prompt spec of ``category``. In the compositional split the first object
    is always a held-out (color, shape) pair, so those prompts need color+shape."""
    comp = split == "compositional"
    maybe = lambda p, v: v if rng.random() < p else None  # noqa: E731
    size = lambda: rng.choice(list(SIZES))  # noqa: E731
    bg = lambda p: maybe(p, rng.choice(list(BACKGROUNDS)))  # noqa: E731
    if comp and category in ("single_object", "two_object"):
        category = "colors" if category == "single_object" else "color_attr"

    if category in ("single_object", "colors", "background"):
        if category == "single_object":
            obj = ObjectSpec(rng.choice(SHAPES), None, maybe(0.5, size()))
            return PromptSpec(category, (obj,), bg(0.3))
        if category == "colors":
            color, shape = _pick_colored(rng, split)
            return PromptSpec(category, (ObjectSpec(shape, color, maybe(0.5, size())),), bg(0.3))
        if comp:
            color, shape = _pick_colored(rng, split)
        else:
            shape = rng.choice(SHAPES)
            color = maybe(0.5, _pick_colored(rng, split, shape)[0])
        return PromptSpec(category, (ObjectSpec(shape, color, maybe(0.3, size())),), bg(1.0))

    if category == "counting":
        n = rng.choice((1, 2, 3))
        if comp:
            color, shape = _pick_colored(rng, split)
        else:
            shape = rng.choice(SHAPES)
            color = maybe(0.5, _pick_colored(rng, split, shape)[0])
        # Three large objects do not fit a 64px canvas with clear gaps.
        return PromptSpec(category, (ObjectSpec(shape, color, "small" if n == 3 else maybe(0.3, size()), n),), bg(0.3))

    shapes = rng.sample(SHAPES, 2)
    if category == "two_object":
        objs = tuple(ObjectSpec(s, None, maybe(0.3, size())) for s in shapes)
        return PromptSpec(category, objs, bg(0.3))
    if category in ("color_attr", "position"):
        c0, s0 = _pick_colored(rng, split) if comp else _pick_colored(rng, split, shapes[0])
        s1 = rng.choice([s for s in SHAPES if s != s0])
        c1 = rng.choice([c for c in COLORS if c != c0 and (c, s1) not in HELD_OUT])
        objs = (ObjectSpec(s0, c0, maybe(0.2, size())), ObjectSpec(s1, c1, maybe(0.2, size())))
        if rng.random() < 0.5:
            objs = objs[::-1]
        rel = (0, rng.choice(RELATIONS), 1) if category == "position" else None
        return PromptSpec(category, objs, bg(0.3), rel)
    raise ValueError(f"unknown category {category!r}; expected one of {', '.join(CATEGORIES)}")


def _fits(x: float, y: float, half: float, placed: list[tuple[float, float, float]], gap: float) -> bool:
    if not (half + 0.03 <= x <= 1 - half - 0.03 and half + 0.03 <= y <= 1 - half - 0.03):
        return False
    return all(abs(x - px) >= half + ph + gap or abs(y - py) >= half + ph + gap for px, py, ph in placed)


def _place(rng: random.Random, halves: list[float], relation: tuple[int, str, int] | None) -> list[tuple[float, float]]:
    """Non-overlapping centres with clear gaps; a relation is made unambiguous
    (its axis offset dominates the other by a margin)."""
    gap = 0.06
    for _ in range(2000):
        placed: list[tuple[float, float, float]] = []
        for h in halves:
            x, y = rng.uniform(h + 0.03, 1 - h - 0.03), rng.uniform(h + 0.03, 1 - h - 0.03)
            if not _fits(x, y, h, placed, gap):
                break
            placed.append((x, y, h))
        else:
            if relation:
                a, rel, b = relation
                (ax, ay, _), (bx, by, _) = placed[a], placed[b]
                d = {"left of": bx - ax, "right of": ax - bx, "above": by - ay, "below": ay - by}[rel]
                other = abs(ay - by) if rel in ("left of", "right of") else abs(ax - bx)
                if d < 0.18 or d < other + 0.1:
                    continue
            return [(x, y) for x, y, _ in placed]
    raise RuntimeError("could not place objects; the layout constraints are too tight")


def scene_for(spec: PromptSpec, rng: random.Random) -> Scene:
    """Fill every attribute the spec leaves open and place the objects."""
    background = spec.background or rng.choice(list(BACKGROUNDS))
    drawn: list[tuple[str, str, str, int]] = []
    group_of: list[int] = []
    for gi, o in enumerate(spec.objects):
        color = o.color or _free_color(rng, o.shape)
        size = o.size or (
            "small" if o.count == 3 or len(spec.objects) > 1 and rng.random() < 0.5 else rng.choice(list(SIZES))
        )
        for _ in range(o.count):
            drawn.append((o.shape, color, size, gi))
            group_of.append(gi)
    halves = [SIZES[d[2]] / 2 for d in drawn]
    rel = None
    if spec.relation:  # groups of a relation hold one object each
        rel = (group_of.index(spec.relation[0]), spec.relation[1], group_of.index(spec.relation[2]))
    centres = _place(rng, halves, rel)
    objs = tuple(PlacedObject(s, c, z, round(x, 4), round(y, 4)) for (s, c, z, _), (x, y) in zip(drawn, centres))
    return Scene(background, objs)


DEFAULT_MIX: dict[str, float] = {
    "single_object": 0.15,
    "two_object": 0.1,
    "counting": 0.15,
    "colors": 0.2,
    "position": 0.15,
    "color_attr": 0.1,
    "background": 0.15,
}


def sample(
    n: int,
    seed: int = 0,
    split: str = "train",
    categories: dict[str, float] | list[str] | None = None,
    start: int = 0,
) -> list[Sample]:
    """Samples ``start .. start+n-1`` of the stream (seed, split); sample i depends on i alone,
    so training can resume mid-stream.

    >>> [s.key for s in sample(2, seed=0)]
    ['train-0-000000', 'train-0-000001']
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    if isinstance(categories, list):
        categories = {c: 1.0 for c in categories}
    mix = categories or DEFAULT_MIX
    for c in mix:
        if c not in CATEGORIES:
            raise ValueError(f"unknown category {c!r}; expected one of {', '.join(CATEGORIES)}")
    names, weights = list(mix), list(mix.values())
    out = []
    for i in range(start, start + n):
        rng = random.Random(f"{seed}/{_SPLIT_STREAM[split]}/{i}")
        spec = sample_spec(rng, rng.choices(names, weights)[0], split)
        out.append(Sample(f"{split}-{seed}-{i:06d}", caption_for(spec, rng), spec, scene_for(spec, rng), split))
    return out


def with_category(spec: PromptSpec, category: str) -> PromptSpec:
    return replace(spec, category=category)


def scene_relation(scene: Scene, a: int = 0, b: int = 1, margin: float = 0.1) -> str | None:
    """The relation of object a to object b if one axis clearly dominates, else None."""
    oa, ob = scene.objects[a], scene.objects[b]
    dx, dy = ob.x - oa.x, ob.y - oa.y
    if abs(dx) >= 0.18 and abs(dx) >= abs(dy) + margin:
        return "left of" if dx > 0 else "right of"
    if abs(dy) >= 0.18 and abs(dy) >= abs(dx) + margin:
        return "above" if dy > 0 else "below"
    return None


def describe(scene: Scene, rng: random.Random, p_keep: float = 0.7) -> PromptSpec:
    """A true prompt spec for ``scene`` that states each optional attribute with probability ``p_keep``
    (shape and count always): captions of varied detail for contrastive training."""
    keep = lambda v: v if rng.random() < p_keep else None  # noqa: E731
    first = scene.objects[0]
    bg = keep(scene.background)
    if all((o.shape, o.color, o.size) == (first.shape, first.color, first.size) for o in scene.objects):
        obj = ObjectSpec(first.shape, keep(first.color), keep(first.size), len(scene.objects))
        return PromptSpec("counting" if obj.count > 1 else "single_object", (obj,), bg)
    objs = tuple(ObjectSpec(o.shape, keep(o.color), keep(o.size)) for o in scene.objects[:2])
    rel = scene_relation(scene)
    if rel and rng.random() < p_keep:
        return PromptSpec("position", objs, bg, (0, rel, 1))
    return PromptSpec("two_object", objs, bg)


OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def perturb(spec: PromptSpec, rng: random.Random) -> PromptSpec | None:
    """A false spec that differs from ``spec`` in one stated attribute (color, shape, size,
    background, count, relation, or swapped color binding): a hard negative. None if nothing to change."""
    options: list[str] = ["shape"]
    if spec.background:
        options.append("background")
    if any(o.color for o in spec.objects):
        options.append("color")
    if any(o.size for o in spec.objects):
        options.append("size")
    if len(spec.objects) == 1:
        options.append("count")
    if spec.relation:
        options += ["relation", "relation"]
    if len(spec.objects) == 2 and all(o.color for o in spec.objects) and spec.objects[0].color != spec.objects[1].color:
        options.append("binding")
    kind = rng.choice(options)
    objs = list(spec.objects)
    i = rng.randrange(len(objs))
    if kind == "background":
        return replace(spec, background=rng.choice([b for b in BACKGROUNDS if b != spec.background]))
    if kind == "relation":
        a, rel, b = spec.relation  # type: ignore[misc]
        return replace(spec, relation=(a, rng.choice([r for r in RELATIONS if r != rel]), b))
    if kind == "binding":
        c0, c1 = objs[0].color, objs[1].color
        objs = [replace(objs[0], color=c1), replace(objs[1], color=c0)]
    elif kind == "count":
        objs[0] = replace(objs[0], count=rng.choice([c for c in COUNT_WORDS if c != objs[0].count]))
    elif kind == "color":
        i = rng.choice([k for k, o in enumerate(objs) if o.color])
        objs[i] = replace(objs[i], color=rng.choice([c for c in COLORS if c != objs[i].color]))
    elif kind == "size":
        i = rng.choice([k for k, o in enumerate(objs) if o.size])
        objs[i] = replace(objs[i], size=rng.choice([z for z in SIZES if z != objs[i].size]))
    else:
        others = {o.shape for o in objs}
        objs[i] = replace(objs[i], shape=rng.choice([s for s in SHAPES if s not in others]))
    return replace(spec, objects=tuple(objs))

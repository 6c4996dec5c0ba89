"""General-domain prompts from the ``easy_vqa`` package (64x64 shapes, gold answers shipped).

easy-vqa has its own train/test images; ``public`` is carved out of its train images by
image id (:mod:`corpus.splits`), so the three splits never share an image. Each image's shape
and colour are recovered from its own questions and stored in ``facts`` so that the
"detail" rule can reward true descriptive detail and penalise invented detail.
"""

from __future__ import annotations

import functools
import random
import re
from typing import Any

from PIL import Image

from corpus.errors import SpecError
from corpus.splits import assign_splits
from corpus.types import Prompt

COLORS = ("red", "green", "blue", "black", "gray", "teal", "yellow", "brown")
SHAPES = ("circle", "rectangle", "triangle")
_COLOR_RE = re.compile(r"\b(" + "|".join(COLORS) + r")\b")
_SHAPE_RE = re.compile(r"\b(" + "|".join(SHAPES) + r")\b")


@functools.lru_cache(maxsize=2)
def _questions(evqa_split: str) -> dict[int, list[tuple[str, str]]]:
    import easy_vqa

    texts, answers, image_ids = (
        easy_vqa.get_train_questions() if evqa_split == "train" else easy_vqa.get_test_questions()
    )
    per_image: dict[int, list[tuple[str, str]]] = {}
    for text, answer, image_id in zip(texts, answers, image_ids, strict=True):
        per_image.setdefault(int(image_id), []).append((text, answer))
    return per_image


@functools.lru_cache(maxsize=2)
def _image_paths(evqa_split: str) -> dict[int, str]:
    import easy_vqa

    return easy_vqa.get_train_image_paths() if evqa_split == "train" else easy_vqa.get_test_image_paths()


@functools.lru_cache(maxsize=8192)
def _image(evqa_split: str, image_id: int) -> Image.Image:
    with Image.open(_image_paths(evqa_split)[image_id]) as img:
        return img.convert("RGB")


def _attributes(questions: list[tuple[str, str]]) -> dict[str, str]:
    """The image's colour and shape, read off its questions and their gold answers."""
    attrs: dict[str, str] = {}
    for text, answer in questions:
        colors, shapes = _COLOR_RE.findall(text), _SHAPE_RE.findall(text)
        negated = " not " in f" {text} " or " no " in f" {text} "
        if answer in COLORS:
            attrs["color"] = answer
        elif answer in SHAPES:
            attrs["shape"] = answer
            if colors:
                attrs["color"] = colors[0]
        elif answer == ("no" if negated else "yes"):  # the asked-about thing is present
            if colors:
                attrs["color"] = colors[0]
            if shapes:
                attrs["shape"] = shapes[0]
    return attrs


def _facts(text: str, answer: str, attrs: dict[str, str]) -> dict[str, Any]:
    if answer in ("yes", "no"):
        facts: dict[str, Any] = {"kind": "yes/no", "answer": answer}
    elif answer in COLORS:
        facts = {"kind": "color", "answer": answer, "options": {c: [] for c in COLORS}}
    else:
        facts = {"kind": "shape", "answer": answer, "options": {s: [] for s in SHAPES}}
    facts.update(attrs)
    return facts


@functools.lru_cache(maxsize=3)
def _index(split: str) -> list[tuple[str, int, int]]:
    """All (easy-vqa split, image id, question number) in our split, in a fixed order."""
    if split == "test":
        return [(("test"), i, q) for i, qs in sorted(_questions("test").items()) for q in range(len(qs))]
    train = _questions("train")
    owner = assign_splits(f"evqa-{i}" for i in train)
    return [("train", i, q) for i, qs in sorted(train.items()) if owner[f"evqa-{i}"] == split
            for q in range(len(qs))]


def general_prompts(n: int, split: str, rng: random.Random) -> list[Prompt]:
    """``n`` distinct easy-vqa prompts from ``split``, sampled without replacement."""
    index = _index(split)
    if n > len(index):
        raise SpecError(f"only {len(index)} general prompts in split {split!r}, asked for {n}")
    out = []
    for evqa_split, image_id, q in rng.sample(index, n):
        questions = _questions(evqa_split)[image_id]
        text, answer = questions[q]
        out.append(Prompt(
            prompt_id=f"evqa-{evqa_split}-{image_id:05d}-q{q}",
            image=_image(evqa_split, image_id),
            question=text[:1].upper() + text[1:],
            domain="general",
            gold=answer,
            facts=_facts(text, answer, _attributes(questions)),
        ))
    return out


def source_id(prompt_id: str) -> str:
    """The source image behind an easy-vqa prompt id (for split-disjointness checks)."""
    return prompt_id.rsplit("-q", 1)[0]

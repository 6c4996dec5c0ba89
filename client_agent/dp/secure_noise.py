"""Cryptographically secure randomness for DP-SGD, without torchcsprng.

Why this exists: DP-SGD's guarantee assumes the adversary cannot predict the Gaussian noise
added to each step, nor which preference pairs Poisson sampling put into each batch. A seedable
PRNG (torch's default generator, Mersenne Twister) is predictable from its state, so Opacus
only promises its guarantee under ``secure_mode``, which needs ``torchcsprng`` — a package with
no build for torch 2.13. This module provides the same two ingredients from the OS instead.

* **Source.** A ChaCha20 keystream (RFC 8439, via the ``cryptography`` package / OpenSSL),
  keyed with 256 bits from :func:`os.urandom` (the OS CSPRNG) and re-keyed from it every
  2**30 bytes. There is no seed parameter anywhere: two streams never repeat each other.
  (ChaCha20 rather than ``os.urandom`` alone because it is ~3x faster here, 1 GB/s vs 0.35 GB/s.)
* **Uniforms.** 52 random bits ``k`` become ``(k + 1/2) / 2**52``: every such value is an exact
  double strictly inside (0, 1), so ``log(u)`` is always finite and every value of that grid is
  equally likely. (53 bits would not do: ``2**53 - 1/2`` is not a double and rounds up to
  ``2**53``, so the largest draw would be exactly 1.0.)
* **Gaussian, hardened against floating-point attacks.** Mironov (2012, "On significance of
  the least significant bits for differential privacy", ACM CCS) showed that a textbook
  floating-point Laplace sampler leaks the noiseless value through which doubles it can and
  cannot output; Jin et al. (2022, "Are we there yet? Timing and floating-point attacks on
  differential privacy systems", IEEE S&P) showed the same for Gaussian samplers, Opacus's
  included. We use the fix Opacus's own ``secure_mode`` uses, from Holohan & Braghin (2021,
  "Secure random sampling in differential privacy", ESORICS, section 5.1): every noise value is
  the sum of 2n = 4 independent Box–Muller draws of standard deviation sigma/2 (variance adds
  up to sigma**2, so the mechanism and its accounting are unchanged), which raises the cost of
  reconstructing the draws from the output from about 2**53 to 2**159. Draws are made in
  float64 and rounded once to the gradient's dtype.
* **Poisson sampling.** Every pair joins a batch independently with probability ``q``, from a
  fresh uniform per pair per step — the sampling the accountant assumes.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator

import torch

GAUSSIAN_DRAWS = 4  # 2n with n = 2 (Holohan & Braghin 2021, section 5.1; as Opacus secure_mode)
_REKEY_BYTES = 1 << 30  # far below ChaCha20's 2**32-block counter limit (256 GiB) per key
_GRID_BITS = 52
# Noise values made per pass of :meth:`CsprngStream.add_gaussian_`: GAUSSIAN_DRAWS * 8 Ki float64 draws
# (256 KiB) stay in the CPU cache and bound the extra memory of a step, whatever the model's size.
NOISE_CHUNK = 1 << 13


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """torch intra-op parallelism off for the noise loop (restored after).

    Each op of a chunk is small (<= 32 Ki elements): splitting it across threads saves little on
    an idle machine, and on a busy one every parallel region waits for a descheduled worker —
    measured here on 2 shared cores: 30-40x slower than one thread.
    """
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class CsprngStream:
    """Random bits, uniforms, Gaussians and Poisson subsets from the OS CSPRNG (see the module doc)."""

    name = "os-csprng/chacha20"

    def __init__(self) -> None:
        self._encryptor = self._fresh()
        self._used = 0
        self._zeros = b""  # plaintext of the keystream: ChaCha20 applied to zeros
        self._scratch = bytearray()  # reused output buffer: a fresh 256 KiB buffer per chunk costs page faults

    @staticmethod
    def _fresh():  # type: ignore[no-untyped-def]
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

        # 4-byte block counter starting at 0, then a random 12-byte nonce: the counter cannot wrap
        # before re-keying.
        nonce = bytes(4) + os.urandom(12)
        return Cipher(algorithms.ChaCha20(os.urandom(32), nonce), mode=None).encryptor()

    def _keystream(self, n: int) -> memoryview:
        """``n`` fresh keystream bytes in the stream's scratch buffer (overwritten by the next call).

        Re-keys from the OS as needed. Callers copy out what they keep before drawing again.
        """
        if self._used + n > _REKEY_BYTES:
            self._encryptor, self._used = self._fresh(), 0
        self._used += n
        if len(self._zeros) < n:
            self._zeros, self._scratch = bytes(n), bytearray(n)
        out = memoryview(self._scratch)[:n]
        self._encryptor.update_into(memoryview(self._zeros)[:n], out)
        return out

    def random_bytes(self, n: int) -> bytes:
        """``n`` bytes of keystream (ChaCha20 applied to zeros); re-keys from the OS as needed."""
        return bytes(self._keystream(n))

    def uniform(self, n: int) -> torch.Tensor:
        """``n`` float64 uniforms in the open interval (0, 1), on the grid ``(k + 1/2) / 2**52``."""
        if n <= 0:
            return torch.empty(0, dtype=torch.float64)
        raw = torch.frombuffer(self._keystream(8 * n), dtype=torch.int64)
        # top 52 bits of each word; the mask undoes the sign extension of the arithmetic shift
        raw.bitwise_right_shift_(64 - _GRID_BITS).bitwise_and_((1 << _GRID_BITS) - 1)
        return raw.to(torch.float64).add_(0.5).mul_(2.0 ** -_GRID_BITS)  # a copy: the scratch buffer is reused

    def standard_normal(self, n: int) -> torch.Tensor:
        """``n`` independent N(0, 1) float64 draws (Box–Muller, both outputs used)."""
        pairs = (n + 1) // 2
        u = self.uniform(2 * pairs)
        radius = u[:pairs].log_().mul_(-2.0).sqrt_()
        angle = u[pairs:].mul_(2.0 * math.pi)
        out = torch.empty(2 * pairs, dtype=torch.float64)
        torch.cos(angle, out=out[:pairs]).mul_(radius)
        torch.sin(angle, out=out[pairs:]).mul_(radius)
        return out[:n]

    def _hardened(self, n: int, std: float) -> torch.Tensor:
        """``n`` float64 N(0, std**2) values, each the sum of 4 draws of std/2 (floating-point hardening)."""
        total = self.standard_normal(GAUSSIAN_DRAWS * n).view(GAUSSIAN_DRAWS, n).sum(dim=0)
        return total.mul_(std / math.sqrt(GAUSSIAN_DRAWS))

    def add_gaussian_(self, tensor: torch.Tensor, std: float) -> torch.Tensor:
        """Add N(0, std**2) noise to every element of ``tensor`` in place (contiguous), in cache-sized chunks.

        Each value is made exactly as :meth:`gaussian` makes it (float64, rounded once to the
        tensor's dtype); only the working memory is bounded: the noise is never materialised whole.
        """
        if not tensor.is_contiguous():
            raise ValueError("add_gaussian_ needs a contiguous tensor")
        flat = tensor.view(-1)
        if std == 0:
            return tensor
        with _one_thread():
            for start in range(0, flat.numel(), NOISE_CHUNK):
                part = flat[start:start + NOISE_CHUNK]
                part.add_(self._hardened(part.numel(), std).to(dtype=part.dtype, device=part.device))
        return tensor

    def gaussian(self, shape: torch.Size | tuple[int, ...], std: float, *, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu") -> torch.Tensor:
        """N(0, std**2) noise of ``shape``: the sum of 4 draws of std/2 each (floating-point hardening)."""
        n = math.prod(shape)
        if std == 0 or n == 0:
            return torch.zeros(shape, dtype=dtype, device=device)
        out = torch.zeros(n, dtype=dtype)
        return self.add_gaussian_(out, std).view(shape).to(device)

    def poisson_subset(self, num_samples: int, sample_rate: float) -> list[int]:
        """Indices ``i < num_samples``, each included independently with probability ``sample_rate``."""
        mask = self.uniform(num_samples) < sample_rate
        return [int(i) for i in torch.nonzero(mask).flatten().tolist()]  # tolist: no tensor per index

"""Per-pair clipping in one backward pass for models whose trainable layers are all ``nn.Linear``.

Opacus's ghost clipping computes each pair's gradient norm without materialising per-pair
gradients, then runs a *second* backward pass over the whole network to sum the clipped
gradients, and its first pass computes weight gradients that are thrown away. For a model whose
trainable part is a few wide ``nn.Linear`` layers on cached features (``frozen-mlp``) those two
extra passes are most of the cost of a DP step. Book-keeping (Bu, Wang, Zha & Karypis,
*Differentially Private Optimization on Large Model at Small Cost*, ICML 2023, "BK") keeps each
layer's input ``a`` and output gradient ``g`` from one pass instead:

* one ``torch.autograd.grad`` of the summed per-pair losses with respect to the layers' *outputs*
  gives every ``g`` (no weight gradients are formed);
* pair ``b``'s gradient of a layer is ``G_b = sum_t g_bt a_bt^T`` (``t``: every position of the
  pair, both answers included), and ``||G_b||^2 = sum_{t,t'} (a_bt . a_bt')(g_bt . g_bt')``
  (the ghost norm; bias: ``||sum_t g_bt||^2``);
* with ``c_b = min(1, C / (||grad_b|| + 1e-6))`` — Opacus's own clipping factor over the norm of
  the whole per-pair gradient — the clipped sum is one matrix product per layer,
  ``sum_b c_b G_b = (c g)^T a``, written to ``p.grad``.

That is exactly what Opacus's ghost mode leaves in ``p.grad`` (flat per-pair clipping to ``C``,
summed), so the rest is Opacus's, unchanged: the model is wrapped with ``grad_sample_mode="ghost"``
(whose hooks are removed: they would compute the norms a second time), its optimizer adds the
noise (the CSPRNG subclass, :mod:`client_agent.dp.secure_engine`) and divides by the expected
batch size, and its accountant counts the step. Sensitivity, noise and ε are those of ghost and
hooks modes. ``tests/test_dp_bookkeeping.py`` checks the clipped sum against per-pair clipping
computed one pair at a time.

Refused (before training): a trainable parameter outside an ``nn.Linear``. Refused (at the step):
a layer called more than once in a forward pass (its gradient would mix two uses; Opacus calls
this parameter tying), a trainable layer that did not run (eval mode) or does not reach the loss,
and an input whose first dimension is not the batch of pairs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from client_agent.errors import InvalidPrivacyParametersError, TrainingIntegrityError

EPS = 1e-6  # as Opacus: max_grad_norm / (norm + 1e-6)


def bookkeeping_problems(model: nn.Module) -> list[str]:
    """Why book-keeping clipping cannot train ``model`` (empty = it can)."""
    owned = {id(p) for m in model.modules() if isinstance(m, nn.Linear) for p in m.parameters(recurse=False)}
    outside = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in owned]
    return [f"trainable parameter {n} is not in an nn.Linear layer" for n in outside]


class BookKeepingClipper:
    """Hooks on ``model``'s trainable ``nn.Linear`` layers; :meth:`backward` writes clipped sums to ``p.grad``."""

    def __init__(self, model: nn.Module, max_grad_norm: float) -> None:
        problems = bookkeeping_problems(model)
        if problems:
            raise InvalidPrivacyParametersError("book-keeping clipping needs nn.Linear-only training: "
                                                + "; ".join(problems))
        self.max_grad_norm = float(max_grad_norm)
        self.layers = [m for m in model.modules()
                       if isinstance(m, nn.Linear) and any(p.requires_grad for p in m.parameters(recurse=False))]
        if not self.layers:
            raise InvalidPrivacyParametersError("book-keeping clipping: the model has no trainable nn.Linear layer")
        self._seen: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}
        self._handles = [layer.register_forward_hook(self._record) for layer in self.layers]

    def _record(self, module: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        if not (torch.is_grad_enabled() and module.training):
            return
        if module in self._seen:
            raise TrainingIntegrityError(f"{type(module).__name__} called twice in one forward pass: "
                                         "book-keeping clipping needs each trainable layer used once per pair")
        self._seen[module] = (inputs[0].detach(), output)

    def backward(self, per_pair_loss: torch.Tensor) -> torch.Tensor:
        """Set ``p.grad`` = sum over pairs of each pair's gradient clipped to ``max_grad_norm``; return the norms."""
        seen, self._seen = self._seen, {}
        if per_pair_loss.dim() != 1:
            raise TrainingIntegrityError(
                f"book-keeping clipping needs one loss per pair, got shape {tuple(per_pair_loss.shape)}")
        batch = per_pair_loss.shape[0]
        missing = [layer for layer in self.layers if layer not in seen]
        if missing:  # Opacus refuses a trainable layer without per-sample gradients too: never train it on noise
            raise TrainingIntegrityError(f"{len(missing)} trainable nn.Linear layer(s) did not run in training mode "
                                         "in this forward pass: book-keeping clipping has no gradient for them")
        grads = torch.autograd.grad(per_pair_loss.sum(), [seen[layer][1] for layer in self.layers], allow_unused=True)
        flat: list[tuple[nn.Linear, torch.Tensor, torch.Tensor]] = []
        norm_sq = per_pair_loss.new_zeros(batch, dtype=torch.float32)
        for layer, g in zip(self.layers, grads, strict=True):
            a = seen[layer][0]
            if g is None:
                raise TrainingIntegrityError("a trainable nn.Linear layer's output does not reach the loss")
            if a.shape[0] != batch or g.shape[0] != batch:
                raise TrainingIntegrityError(f"a layer saw a first dimension of {a.shape[0]}, not the {batch} pairs")
            a2 = a.reshape(batch, -1, a.shape[-1]).to(g.dtype)
            g2 = g.reshape(batch, -1, g.shape[-1])
            if layer.weight.requires_grad:
                norm_sq += _ghost_norm_sq(a2, g2).float()
            if layer.bias is not None and layer.bias.requires_grad:
                norm_sq += g2.sum(dim=1).pow(2).sum(dim=1).float()
            flat.append((layer, a2, g2))
        norms = norm_sq.clamp(min=0).sqrt()
        coef = (self.max_grad_norm / (norms + EPS)).clamp(max=1.0)
        for layer, a2, g2 in flat:
            scaled = g2 * coef.to(g2.dtype)[:, None, None]
            if layer.weight.requires_grad:
                layer.weight.grad = (scaled.reshape(-1, g2.shape[-1]).T @ a2.reshape(-1, a2.shape[-1])).to(
                    layer.weight.dtype)
            if layer.bias is not None and layer.bias.requires_grad:
                layer.bias.grad = scaled.sum(dim=(0, 1)).to(layer.bias.dtype)
        return norms

    def discard(self) -> None:
        """Forget what the last forward pass recorded (a step that did not reach :meth:`backward`)."""
        self._seen = {}

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles, self._seen = [], {}


def _ghost_norm_sq(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Per-pair ``||sum_t g_t a_t^T||_F^2`` from ``a`` [B, T, in] and ``g`` [B, T, out], never forming the sum.

    Cost ``B T^2 (in + out)`` against ``B in out`` for the explicit per-pair gradient: the cheaper
    one is taken.
    """
    t, d_in, d_out = a.shape[1], a.shape[2], g.shape[2]
    if t * t * (d_in + d_out) <= d_in * d_out:
        return torch.einsum("bij,bij->b", a @ a.transpose(1, 2), g @ g.transpose(1, 2))
    return torch.einsum("bto,bti->boi", g, a).pow(2).sum(dim=(1, 2))


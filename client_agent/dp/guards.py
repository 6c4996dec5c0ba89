"""Guards against DP training that *looks* fine (loss and ε normal) but is not.

Opacus issue #820: with PEFT, LoRA weights could be silently left unchanged or corrupted
while the loss curve and the accountant looked normal. So after every epoch we check, for
the parameters the architecture *means* to train, that each is trainable, moved, and is
finite — and that every parameter it means to keep frozen did not move.
"""

from __future__ import annotations

import torch
from torch import nn

from client_agent.errors import TrainingIntegrityError


class ParameterGuard:
    """Snapshot parameters before training; :meth:`check` after each epoch."""

    def __init__(self, model: nn.Module, trainable: list[str]) -> None:
        params = dict(model.named_parameters())
        unknown = [n for n in trainable if n not in params]
        if unknown:
            raise TrainingIntegrityError(f"architecture names parameters that do not exist: {unknown[:5]}")
        frozen_by_mistake = [n for n in trainable if not params[n].requires_grad]
        if frozen_by_mistake:
            raise TrainingIntegrityError(
                f"{len(frozen_by_mistake)} parameter(s) meant to train have requires_grad=False "
                f"(e.g. {frozen_by_mistake[0]}): refusing to train (Opacus+PEFT #820 guard)"
            )
        self._trainable = set(trainable)
        self._params = params
        self._last = {n: p.detach().clone() for n, p in params.items()}

    def check(self, epoch: int) -> None:
        for name, p in self._params.items():
            now = p.detach()
            if not torch.isfinite(now).all():
                raise TrainingIntegrityError(f"epoch {epoch}: parameter {name} has non-finite values")
            moved = not torch.equal(now, self._last[name])
            if name in self._trainable and not moved:
                raise TrainingIntegrityError(
                    f"epoch {epoch}: trainable parameter {name} did not change (Opacus+PEFT #820 guard)"
                )
            if name not in self._trainable and moved:
                raise TrainingIntegrityError(f"epoch {epoch}: frozen parameter {name} changed")
            self._last[name] = now.clone()

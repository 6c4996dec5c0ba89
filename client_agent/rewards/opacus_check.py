"""Can Opacus privatise this model? Answered before training, naming the layer at fault.

Why our own walk instead of letting ``make_private`` fail: Opacus reports an unsupported
layer deep inside a traceback, without its name, sometimes only at the first backward pass —
and a frozen BatchNorm is not reported at all although, in training mode, it mixes the
statistics of every sample in a batch (one member's record then leaks into every other
sample's activations, which per-sample clipping cannot bound). A member bringing its own
architecture needs one sentence saying which layer and what to do.
"""

from __future__ import annotations

from torch import nn

from client_agent.errors import RewardModelError

_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


class UnsupportedLayerError(RewardModelError):
    """Opacus cannot compute sound per-sample gradients for a layer of the model."""


def privatisation_problems(model: nn.Module) -> list[str]:
    """One line per layer that DP-SGD cannot handle, with what to do about it (empty = fine)."""
    from opacus.validators import ModuleValidator

    was_training = model.training
    model.train()  # what DP training will do; a model may keep parts in eval mode by overriding train()
    try:
        problems = []
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        if not trainable:
            problems.append("the model has no trainable parameters: nothing for DP-SGD to train")
        for name, module in model.named_modules():
            label = f"layer {name or '<root>'!r} ({type(module).__name__})"
            own = [p for p in module.parameters(recurse=False) if p.requires_grad]
            if isinstance(module, _BATCHNORMS) and module.training:
                problems.append(
                    f"{label}: BatchNorm mixes samples within a batch, so per-sample privacy cannot hold; replace it "
                    "with GroupNorm (opacus.validators.ModuleValidator.fix(model) does this), or keep it frozen in "
                    "eval mode (override train() for that part, or compute its features outside the model)")
                continue
            if not own:
                continue
            if list(module.buffers(recurse=False)):
                problems.append(f"{label}: a trainable layer with buffers (running statistics) that Opacus cannot "
                                "privatise; freeze it (requires_grad_(False)) or replace it")
            validator = ModuleValidator.VALIDATORS.get(type(module))
            for error in validator(module) if validator else []:
                problems.append(f"{label}: {str(error).split('. ')[0]}; freeze it or use its Opacus replacement "
                                "(opacus.validators.ModuleValidator.fix(model))")
        return problems
    finally:
        model.train(was_training)


def check_privatizable(model: nn.Module) -> None:
    """Raise :class:`UnsupportedLayerError` listing every layer DP-SGD cannot handle."""
    problems = privatisation_problems(model)
    if problems:
        raise UnsupportedLayerError("Opacus cannot privatise this reward model: " + "; ".join(problems))

"""Architecture names -> classes; building, checking and loading a reward model of any architecture.

Three ways in: the built-ins (``ARCHITECTURES``), Hugging Face checkpoints from a local path
(``hf-text``, ``hf-vlm``; ``params.path``) and a member's own code (``arch =
"package.module:factory"``). Only the last runs code that is not ours, and only when the
agent's config names it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from client_agent.errors import CheckpointError
from client_agent.rewards.base import WEIGHTS, RewardModel, read_manifest
from client_agent.rewards.entry_point import EntryPointReward, check_factory_params, is_entry_point
from client_agent.rewards.frozen_mlp import FrozenMLPReward
from client_agent.rewards.hf_text import HFTextReward
from client_agent.rewards.hf_vlm import HFVLMReward
from client_agent.rewards.lora_minilm import LoraMiniLMReward
from client_agent.rewards.tiny_vlt import TinyVLTReward

ARCHITECTURES: dict[str, type[RewardModel]] = {
    cls.arch: cls for cls in (FrozenMLPReward, TinyVLTReward, LoraMiniLMReward)
}
HF_ARCHITECTURES: dict[str, type[HFTextReward] | type[HFVLMReward]] = {
    HFTextReward.arch: HFTextReward, HFVLMReward.arch: HFVLMReward}
_SAVED: dict[str, type[RewardModel]] = {**ARCHITECTURES, **HF_ARCHITECTURES, EntryPointReward.arch: EntryPointReward}
ARCH_NAMES = (*ARCHITECTURES, *HF_ARCHITECTURES, "package.module:factory")


def _accepted(arch: str) -> set[str]:
    import inspect

    cls = HF_ARCHITECTURES.get(arch) or ARCHITECTURES[arch]
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "model", "tokenizer", "processor"}
    if arch in HF_ARCHITECTURES:
        accepted = (accepted - {"base"}) | {"path"}
    return accepted


def model_param_problems(arch: str, params: dict[str, Any]) -> list[str]:
    """Why ``arch`` with ``params`` cannot be built (empty = fine); imports an entry point's module."""
    if is_entry_point(arch):
        return [f"params.{k}: not a parameter of {arch}" for k in check_factory_params(arch, params)]
    if arch not in ARCHITECTURES and arch not in HF_ARCHITECTURES:
        return [f"arch: unknown architecture {arch!r}; known: {', '.join(ARCH_NAMES)}"]
    accepted = _accepted(arch)
    problems = [f"params.{k}: not a parameter of {arch} (accepted: {', '.join(sorted(accepted))})"
                for k in params if k not in accepted]
    if arch in HF_ARCHITECTURES and "path" not in params:
        problems.append(f"params.path: required for {arch} (the local Hugging Face checkpoint folder)")
    return problems


def build_reward_model(arch: str, params: dict[str, Any]) -> RewardModel:
    """A fresh, untrained model: built-in, Hugging Face checkpoint or entry point."""
    if is_entry_point(arch):
        return EntryPointReward(entry_point=arch, params=params)
    if arch in HF_ARCHITECTURES:
        return HF_ARCHITECTURES[arch].from_pretrained(**params)
    if arch == LoraMiniLMReward.arch:  # its __init__ takes a loaded encoder: build from the bundled one
        return LoraMiniLMReward.from_pretrained(**params)
    return ARCHITECTURES[arch](**params)


def load_reward_model(directory: str | Path, *, entry_point: str | None = None) -> RewardModel:
    """Rebuild a model saved with :meth:`RewardModel.save` and check its weights' digest.

    A saved entry-point model is only rebuilt when ``entry_point`` (the agent config's
    ``[model].arch``) names the very same factory: a state directory alone never decides
    which code is imported.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    manifest = read_manifest(directory)
    cls = _SAVED.get(manifest["arch"])
    if cls is None:
        raise CheckpointError(
            f"{directory / 'reward_model.json'}: unknown arch {manifest['arch']!r}; known: {sorted(_SAVED)}"
        )
    if cls is EntryPointReward and manifest["config"].get("entry_point") != entry_point:
        raise CheckpointError(f"{directory / 'reward_model.json'}: saved model needs entry point "
                              f"{manifest['config'].get('entry_point')!r}, which the agent config does not name "
                              f"(it names {entry_point!r}); refusing to import code a saved model names")
    try:
        state = load_file(str(directory / WEIGHTS))
    except (OSError, SafetensorError) as exc:
        raise CheckpointError(f"{directory / WEIGHTS}: cannot read weights: {exc}") from None
    try:
        model = cls._from_manifest(directory, manifest["config"])
    except TypeError as exc:
        raise CheckpointError(f"{directory / 'reward_model.json'}: bad config: {exc}") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{directory / WEIGHTS}: weights do not fit {cls.arch}: {exc}") from None
    if model.model_digest() != manifest["digest"]:
        raise CheckpointError(f"{directory / WEIGHTS}: weights digest differs from the manifest (tampered?)")
    model.eval()
    return model

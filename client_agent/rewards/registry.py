"""Architecture names -> classes, and loading a saved reward model of any architecture."""

from __future__ import annotations

from pathlib import Path

from client_agent.errors import CheckpointError
from client_agent.rewards.base import WEIGHTS, RewardModel, read_manifest
from client_agent.rewards.frozen_mlp import FrozenMLPReward
from client_agent.rewards.lora_minilm import LoraMiniLMReward
from client_agent.rewards.tiny_vlt import TinyVLTReward

ARCHITECTURES: dict[str, type[RewardModel]] = {
    cls.arch: cls for cls in (FrozenMLPReward, TinyVLTReward, LoraMiniLMReward)
}


def load_reward_model(directory: str | Path) -> RewardModel:
    """Rebuild a model saved with :meth:`RewardModel.save` and check its weights' digest."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    manifest = read_manifest(directory)
    cls = ARCHITECTURES.get(manifest["arch"])
    if cls is None:
        raise CheckpointError(
            f"{directory / 'reward_model.json'}: unknown arch {manifest['arch']!r}; known: {sorted(ARCHITECTURES)}"
        )
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

"""Heterogeneous reward models behind one interface (see :mod:`client_agent.rewards.base`).

Three architectures on purpose: frozen pretrained encoders + MLP head (``frozen-mlp``), a
small vision-language transformer from scratch (``tiny-vlt``) and a LoRA-adapted pretrained
encoder (``lora-minilm``). Clients never reveal which one they run.
"""

from client_agent.rewards.base import BradleyTerryLoss, RewardModel, pair_accuracy
from client_agent.rewards.frozen_mlp import FrozenMLPReward
from client_agent.rewards.lora_minilm import LoraMiniLMReward
from client_agent.rewards.registry import ARCHITECTURES, load_reward_model
from client_agent.rewards.tiny_vlt import TinyVLTReward

__all__ = [
    "ARCHITECTURES",
    "BradleyTerryLoss",
    "FrozenMLPReward",
    "LoraMiniLMReward",
    "RewardModel",
    "TinyVLTReward",
    "load_reward_model",
    "pair_accuracy",
]

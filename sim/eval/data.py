"""Everything the experiment reads, built once from the offline corpus (fixed across seeds).

Split discipline: clients' private pairs and the GRPO prompts come from the ``train`` split;
the router's labelled pairs and the calibration batch from the server-held ``public`` split;
every metric from the ``test`` split (held-out prompts for win rates and accuracy, held-out
pairs per client for reward-model accuracy). Splits never share a source image.
"""

from __future__ import annotations

from dataclasses import dataclass

from corpus import build_calibration_set, build_client_pairs, build_prompts, build_public_pairs
from corpus.types import PreferencePair, Prompt
from sim.eval.config import EvalConfig


@dataclass(frozen=True)
class EvalData:
    client_pairs: dict[str, list[PreferencePair]]
    test_pairs: dict[str, list[PreferencePair]]
    public_pairs: list[PreferencePair]
    calibration: list[tuple[Prompt, str]]
    train_prompts: list[Prompt]
    eval_prompts: list[Prompt]

    def sizes(self) -> dict[str, object]:
        return {
            "client_pairs": {k: len(v) for k, v in self.client_pairs.items()},
            "test_pairs": {k: len(v) for k, v in self.test_pairs.items()},
            "public_pairs": len(self.public_pairs), "calibration": len(self.calibration),
            "train_prompts": len(self.train_prompts),
            "eval_prompts_by_domain": {d: sum(p.domain == d for p in self.eval_prompts)
                                       for d in sorted({p.domain for p in self.eval_prompts})},
        }


def build_data(config: EvalConfig) -> EvalData:
    """The experiment's data; deterministic for a given config."""
    return EvalData(
        client_pairs={c.name: build_client_pairs(c.style, config.n_client_pairs, split="train", seed=0)
                      for c in config.clients},
        test_pairs={c.name: build_client_pairs(c.style, config.n_test_pairs, split="test", seed=1)
                    for c in config.clients},
        public_pairs=build_public_pairs(config.n_public_pairs, seed=0),
        calibration=build_calibration_set(config.n_calibration, seed=0),
        train_prompts=build_prompts(config.n_train_prompts, split="train", seed=2),
        eval_prompts=build_prompts(config.n_eval_prompts, split="test", seed=3),
    )

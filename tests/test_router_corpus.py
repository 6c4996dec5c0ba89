"""The learned router on real corpus data: stand-in agents are the three hidden styles themselves.

Each style's *true* utility acts as a perfect client for its own taste. Public pairs are
labelled by the style owning the prompt's domain, so from prompt embeddings alone (real
EfficientNet-lite0 + MiniLM features) the router must learn to send each domain to its owner.
"""

from __future__ import annotations

import pytest
import torch

from corpus import STYLES, build_public_pairs
from corpus.styles import DOMAIN_OWNER
from server.router import PROMPT_FEATURE_DIM, LearnedRouter, RouterFitConfig, RouterTrainingSet, prompt_features

AGENTS = ("medical", "finance", "detail")


@pytest.mark.slow
def test_router_sends_each_domain_to_the_style_that_owns_it() -> None:
    pairs = build_public_pairs(360, seed=0)
    prompts = {p.prompt.prompt_id: p.prompt for p in pairs}
    order = list(prompts)
    encoded = prompt_features([prompts[i] for i in order])
    assert encoded.shape == (len(order), PROMPT_FEATURE_DIM)
    features = encoded[[order.index(p.prompt.prompt_id) for p in pairs]]

    chosen = torch.tensor([[STYLES[a].utility(p.prompt, p.chosen) for a in AGENTS] for p in pairs])
    rejected = torch.tensor([[STYLES[a].utility(p.prompt, p.rejected) for a in AGENTS] for p in pairs])
    both = torch.cat([chosen, rejected])  # calibrate each agent to zero mean, unit spread
    mean, std = both.mean(0), both.std(0)
    data = RouterTrainingSet(
        AGENTS, features, (chosen - mean) / std, (rejected - mean) / std, torch.ones(len(pairs), 3, dtype=torch.bool),
        domains=tuple(p.prompt.domain for p in pairs), groups=tuple(p.prompt.prompt_id for p in pairs),
    )
    report = LearnedRouter(AGENTS).fit(data, RouterFitConfig(show_progress=False))

    assert report.mean_weights_by_domain is not None
    for domain, weights in report.mean_weights_by_domain.items():
        owner = DOMAIN_OWNER[domain]
        assert max(weights, key=weights.__getitem__) == owner, report.to_dict()
        assert weights[owner] > 0.5, report.to_dict()
    assert report.val_accuracy >= report.val_accuracy_uniform - 0.02, report.to_dict()

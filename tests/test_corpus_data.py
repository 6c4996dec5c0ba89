"""Prompts, hidden rules and builders: what the alignment experiment relies on."""

from __future__ import annotations

import random
import time

import pytest

from corpus import (
    STYLES,
    SpecError,
    build_calibration_set,
    build_client_pairs,
    build_prompts,
    build_public_pairs,
    build_sft_examples,
    source_finance,
    source_general,
    source_medical,
)
from corpus.candidates import candidate_answers
from corpus.judging import judge

SOURCE_OF = {"medical": source_medical.source_id, "finance": source_finance.source_id,
             "general": source_general.source_id}


def _sources(split: str, domain: str, n: int) -> set[str]:
    return {SOURCE_OF[domain](p.prompt_id) for p in build_prompts(n, domain=domain, split=split, seed=5)}


@pytest.mark.parametrize("domain", ["medical", "finance", "general"])
def test_splits_never_share_source_images(domain: str) -> None:
    n = {"medical": 150, "finance": 100, "general": 400}[domain]
    train, public, test = (_sources(s, domain, n) for s in ("train", "public", "test"))
    assert train and public and test
    assert not train & test and not train & public and not public & test


def test_prompts_are_valid_and_deterministic() -> None:
    first, again = build_prompts(60, seed=3), build_prompts(60, seed=3)
    assert [p.prompt_id for p in first] == [p.prompt_id for p in again]
    assert first == again  # images too
    assert len({p.prompt_id for p in first}) == 60
    assert {p.domain for p in first} == {"medical", "finance", "general"}
    assert [p.prompt_id for p in build_prompts(60, seed=4)] != [p.prompt_id for p in first]
    for p in first:
        assert p.image.mode == "RGB" and p.image.size == (64, 64)
        assert p.gold is not None and judge(p.facts, p.gold).score == 1.0  # the gold answer is judged right
    finance = [p for p in first if p.domain == "finance"]
    assert all(p.gold == f"{p.facts['value']:.2f}" for p in finance)


def test_finance_gold_is_the_csv_value() -> None:
    (p,) = [q for q in build_prompts(200, domain="finance", seed=0) if q.facts["kind"] == "price"][:1]
    import csv

    from matplotlib import cbook

    with open(str(cbook.get_sample_data("Stocks.csv", asfileobj=False))) as handle:
        rows = list(csv.DictReader(line for line in handle if not line.startswith("#")))
    month = {name: i for i, name in enumerate(["January", "February", "March", "April", "May", "June", "July",
                                                "August", "September", "October", "November", "December"], 1)}
    date = f"{p.facts['year']}-{month[p.facts['month']]:02d}-01"
    (row,) = [r for r in rows if r["Date"] == date]
    ticker = p.facts["ticker"]
    assert p.gold == f"{float(row[ticker] if ticker in row else row['^' + ticker]):.2f}"


def test_every_style_prefers_correct_over_wrong_in_its_domains() -> None:
    rng = random.Random(0)
    for name, style in STYLES.items():
        for domain in style.domains:
            for prompt in build_prompts(40, domain=domain, split="test", seed=1):
                cands = candidate_answers(prompt, rng)
                right = [style.utility(prompt, c.text) for c in cands if c.correct]
                wrong = [style.utility(prompt, c.text) for c in cands if not c.correct]
                assert min(right) > max(wrong), (name, prompt.prompt_id)


def test_styles_disagree_on_some_pairs() -> None:
    rng = random.Random(0)
    disagreements = {}
    for domain in ("medical", "finance", "general"):
        count = 0
        for prompt in build_prompts(20, domain=domain, seed=2):
            cands = [c.text for c in candidate_answers(prompt, rng)]
            for a in cands:
                for b in cands:
                    signs = {(s.utility(prompt, a) > s.utility(prompt, b)) for s in STYLES.values()}
                    count += len(signs) == 2
        disagreements[domain] = count
    assert all(c > 0 for c in disagreements.values()), disagreements
    # and concretely: a terse correct answer vs a full descriptive sentence
    prompt = build_prompts(1, domain="general", seed=0)[0]
    terse, descriptive = (next(c.text for c in candidate_answers(prompt, rng) if c.correct and c.form == f)
                          for f in ("terse", "descriptive"))
    assert STYLES["detail"].utility(prompt, descriptive) > STYLES["detail"].utility(prompt, terse)
    assert STYLES["finance"].utility(prompt, descriptive) < STYLES["finance"].utility(prompt, terse)


def test_utility_scores_arbitrary_strings() -> None:
    prompt = build_prompts(3, seed=0)
    for p in prompt:
        for text in ["", "???", "12,345.678 $$ no yes", "\x00\u202e", "a" * 5000, "-0.00"]:
            for style in STYLES.values():
                assert isinstance(style.utility(p, text), float)


def test_client_pairs_are_labelled_mostly_by_the_rule_and_deterministic() -> None:
    start = time.perf_counter()
    pairs = build_client_pairs("medical", 2000, seed=0)
    assert time.perf_counter() - start < 20
    assert len(pairs) == 2000
    assert all(p.prompt.domain == "medical" and p.meta["style"] == "medical" for p in pairs)
    agree = sum(p.meta["agrees_with_rule"] for p in pairs) / len(pairs)
    assert 0.75 < agree < 0.99  # mostly but not perfectly consistent (Bradley-Terry sampling)
    assert all((p.meta["margin"] > 0) == p.meta["agrees_with_rule"] for p in pairs)
    again = build_client_pairs("medical", 50, seed=0)
    assert [(p.prompt.prompt_id, p.chosen, p.rejected) for p in again] == \
        [(p.prompt.prompt_id, p.chosen, p.rejected) for p in build_client_pairs("medical", 50, seed=0)]
    test_ids = {source_medical.source_id(p.prompt.prompt_id) for p in build_client_pairs("medical", 200, split="test")}
    assert not test_ids & {source_medical.source_id(p.prompt.prompt_id) for p in pairs}


def test_public_pairs_use_the_domain_owners_rule() -> None:
    pairs = build_public_pairs(90, seed=0)
    owner = {"medical": "medical", "finance": "finance", "general": "detail"}
    assert len(pairs) == 90
    assert {p.prompt.domain for p in pairs} == set(owner)
    assert all(p.meta["style"] == owner[p.prompt.domain] for p in pairs)
    assert all(p.prompt.prompt_id.split("-")[1] != "test" for p in pairs)


def test_calibration_and_sft_examples() -> None:
    calibration = build_calibration_set(30, seed=0)
    assert len(calibration) == 30 and len({r for _, r in calibration}) > 10
    sft = build_sft_examples(30, seed=0)
    owner = {"medical": "medical", "finance": "finance", "general": "detail"}
    for prompt, answer in sft:
        assert judge(prompt.facts, answer).score == 1.0
        assert STYLES[owner[prompt.domain]].utility(prompt, answer) > 3.0


def test_bad_requests_are_refused() -> None:
    with pytest.raises(SpecError, match="unknown style"):
        build_client_pairs("astrology", 3)
    with pytest.raises(SpecError, match="unknown split"):
        build_prompts(3, split="validation")
    with pytest.raises(SpecError, match="n must be >= 0"):
        build_prompts(-1)

"""GRPO progress on the status page, read back from a real audit log's tail: step, reward, KL and the run's state."""

from __future__ import annotations

from pathlib import Path

from audit import AuditLog
from crypto.signing import SigningKey
from server.status_progress import read_training_progress

STEP = {"reward": 0.25, "reward_std": 1.0, "kl": 0.01, "agents_answered": 3.0, "round_skipped": 0.0}


def _log(tmp: Path, *actions: tuple[str, dict[str, object]]) -> Path:
    with AuditLog.open(tmp / "audit", signing_key=SigningKey.generate(), origin="mor://t/server") as log:
        for action, details in actions:
            log.append(actor="server", action=action, details=details)
    return tmp / "audit" / "entries.jsonl"


def test_no_run_yet(tmp_path: Path) -> None:
    assert read_training_progress(_log(tmp_path, ("server.started", {}))) is None
    assert read_training_progress(tmp_path / "missing.jsonl") is None


def test_the_newest_run_its_last_step_and_how_it_ended(tmp_path: Path) -> None:
    started = ("training.started", {"config": {"max_steps": 5}})
    entries = _log(tmp_path, started, ("grpo.step", {"step": 1, **STEP}), ("training.finished", {}),
                   ("server.started", {}), started, ("grpo.step", {"step": 1, **STEP}),
                   ("grpo.step", {"step": 2, **STEP, "kl": 0.02}))
    progress = read_training_progress(entries)
    assert progress is not None
    assert (progress.state, progress.step, progress.max_steps, progress.kl) == ("running", 2, 5, 0.02)
    for end, state in (("training.stopped", "stopped"), ("training.failed", "failed")):
        (tmp_path / end).mkdir()
        done = read_training_progress(_log(tmp_path / end, started, ("grpo.step", {"step": 3, **STEP}), (end, {})))
        assert done is not None and (done.state, done.step) == (state, 3)
    (tmp_path / "restart").mkdir()
    restarted = read_training_progress(_log(tmp_path / "restart", started, ("grpo.step", {"step": 4, **STEP}),
                                            ("server.started", {})))
    assert restarted is not None and restarted.state.startswith("interrupted") and restarted.step == 4
    (tmp_path / "finished-then-restarted").mkdir()
    finished = read_training_progress(_log(tmp_path / "finished-then-restarted", started,
                                           ("grpo.step", {"step": 5, **STEP}), ("training.finished", {}),
                                           ("server.started", {})))
    assert finished is not None and (finished.state, finished.step) == ("finished", 5)


def test_a_line_nested_too_deep_for_json_is_skipped_not_a_failed_page(tmp_path: Path) -> None:
    """A damaged tail line of 100k brackets made ``json.loads`` raise RecursionError: the page answered 500."""
    entries = _log(tmp_path, ("training.started", {"config": {"max_steps": 5}}), ("grpo.step", {"step": 1, **STEP}))
    with entries.open("ab") as handle:
        handle.write(b"[" * 100_000 + b"]" * 100_000 + b"\n")
    progress = read_training_progress(entries)
    assert progress is not None and (progress.state, progress.step) == ("running", 1)

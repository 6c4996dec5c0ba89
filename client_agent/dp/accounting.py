"""Recompute ε from the logged DP-SGD history with an accountant independent of Opacus.

Why independent: a bug in how the training loop *logs* its history, or in Opacus' own
accountant, would otherwise be checked against itself. The ``prv_accountant`` package
(Microsoft's reference implementation of Gopi et al. 2021) shares no code with Opacus.
"""

from __future__ import annotations

from collections.abc import Sequence

from client_agent.errors import InvalidPrivacyParametersError, TrainingIntegrityError

EPS_ERROR = 0.01


def recompute_epsilon(history: Sequence[tuple[float, float, int]], delta: float) -> float:
    """Upper bound on ε after ``history`` = [(noise_multiplier, sample_rate, steps), ...]."""
    try:
        from prv_accountant import PoissonSubsampledGaussianMechanism, PRVAccountant
    except ImportError:
        raise InvalidPrivacyParametersError(
            "recompute_epsilon needs the 'prv-accountant' package (pip install prv-accountant)"
        ) from None
    rows = [(float(s), float(q), int(n)) for s, q, n in history if int(n) > 0]
    if not rows:
        return 0.0
    prvs = [PoissonSubsampledGaussianMechanism(noise_multiplier=s, sampling_probability=q) for s, q, _ in rows]
    counts = [n for _, _, n in rows]
    # prv_accountant's discretiser occasionally rejects a mesh ("discrete mean differs"); the
    # bound is valid for any delta_error << delta, so try a short ladder before giving up.
    failures = []
    for delta_error in (delta / 1000, delta / 100, delta / 10_000):
        try:
            accountant = PRVAccountant(prvs=prvs, max_self_compositions=counts, eps_error=EPS_ERROR,
                                       delta_error=delta_error)
            return float(accountant.compute_epsilon(delta=delta, num_self_compositions=counts)[2])
        except (RuntimeError, ValueError) as exc:
            failures.append(f"delta_error={delta_error:g}: {exc}")
    raise TrainingIntegrityError("independent accountant could not compute epsilon: " + "; ".join(failures))


def check_epsilon(reported: float, history: Sequence[tuple[float, float, int]], delta: float,
                  *, rel_tol: float = 0.01) -> float:
    """Raise unless the independent ε agrees with ``reported`` within ``rel_tol``; return it."""
    independent = recompute_epsilon(history, delta)
    if abs(independent - reported) > rel_tol * max(reported, 1e-12):
        raise TrainingIntegrityError(
            f"reported epsilon {reported:.4f} disagrees with the independently recomputed {independent:.4f}"
        )
    return independent

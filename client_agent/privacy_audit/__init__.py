"""The member's empirical privacy audit (``mor privacy audit``): canaries, two attacks, an ε lower bound.

:mod:`.audit` runs the experiment, :mod:`.attacks` and :mod:`.stats` turn canary scores into
TPR at low FPR and an empirical ε with a Clopper–Pearson confidence bound, :mod:`.report` prints
and records it. Method and measured figures: ``docs/privacy-audit.md``.
"""

from client_agent.privacy_audit.audit import AuditOutcome, AuditSettings, run_audit

__all__ = ["AuditOutcome", "AuditSettings", "run_audit"]

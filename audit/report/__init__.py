"""The auditor's report (``mor audit report``): every log verified, every receipt reconciled, one HTML page.

:func:`build_report` gathers and judges (:mod:`audit.report.build`, facts from
:mod:`audit.report.facts`); :func:`render_report` writes the self-contained page
(:mod:`audit.report.html`). What it covers of HIPAA 164.312(b) and PCI DSS 10.2:
``docs/audit-report.md``.
"""

from audit.report.build import LogInput, PolicyTerms, build_report
from audit.report.html import render_report

__all__ = ["LogInput", "PolicyTerms", "build_report", "render_report"]

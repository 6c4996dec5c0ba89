"""``mor demo``: the whole system end to end on one machine, as separate processes over mutual TLS.

=======================  ==================================================================
:mod:`.run`              the phases, provision -> DP training -> services -> GRPO -> audit -> report
:mod:`.provision`        the demo's members, their private data, the run's policy and configs
:mod:`.policy_model`     the checkpoint it aligns: the pretrained SmolLM2 VLM (default) or the toy
:mod:`.reconcile`        every audit log verified; every agent receipt found in the server's log
:mod:`.evaluate`         the aligned policy against its reference on held-out prompts
:mod:`.results`          ``results.json``: what the run did, gathered as an auditor would
:mod:`.report`           ``report.html``: the same, self-contained, for a person
=======================  ==================================================================

Processes, certificates and configs come from the shared harness, :mod:`sim.harness`.
"""

from sim.demo.run import PHASES, DemoOptions, DemoOutcome, default_cache, policy_model, run_demo

__all__ = ["PHASES", "DemoOptions", "DemoOutcome", "default_cache", "policy_model", "run_demo"]

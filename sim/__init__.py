"""Simulation and measurement harnesses that run the real system on one machine.

``sim.demo`` is ``mor demo`` (provision -> DP training -> mTLS services -> GRPO -> audit
reconciliation -> report; helpers in ``sim.processes``, ``sim.provision``, ``sim.reconcile``,
``sim.evaluate``, ``sim.results``, ``sim.report``); ``sim.bench`` is ``mor bench``.
"""

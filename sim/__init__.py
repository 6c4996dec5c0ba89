"""The real system run on one machine: the shared harness, the demo, the benchmarks, the evaluation experiment.

====================  ======================  ================================================================
``sim.harness``       (library)               a consortium CA and certificates, server / key-holder configs,
                                              ``mor`` processes started, probed over mTLS and stopped — the
                                              one harness the demo, the bench and the tests all use
``sim.demo``          ``mor demo``            the whole system end to end as separate processes, audited
``sim.bench``         ``mor bench``           the cost of privacy, as ratios to baselines timed in the same run
``sim.eval``          ``mor eval``            does Mixture-of-Rewards help? every method, same GRPO budget
====================  ======================  ================================================================

Every failure is a :class:`sim.errors.SimError` (one tree, drawn in :mod:`sim.errors`).
"""

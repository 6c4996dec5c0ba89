"""Simulation harnesses that run the whole system on one machine: ``mor demo`` (parties as
processes over mTLS), ``mor bench`` (:mod:`sim.bench`) and ``mor eval`` (:mod:`sim.eval`)."""

"""In-process simulation and experiment harnesses (no network): evaluation of the fusion choices."""

"""Simulated misbehaviour (attacks, signing faults) wrapping the honest device, for demos,
tests and benchmarks."""

"""Benchmarks: the real App end to end against the loopback simulators (`python -m bench.burst`)."""

"""Benchmarks behind `make bench` (outside the product package): `python -m benchmarks [part ...]`."""

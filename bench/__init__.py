"""Benchmarks of the project (speed, memory, loader throughput); run as `python bench/<name>.py`."""

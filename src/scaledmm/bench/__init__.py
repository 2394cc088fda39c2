"""Benchmarks: the timing protocol, shapes of public models, and the micro benchmark behind `scaledmm bench`."""

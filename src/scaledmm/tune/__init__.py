"""Ahead-of-time tuning: the search space, the candidate runner, and the distribution of jobs over
GPUs and nodes. `scaledmm tune` is the command; its results are config files (scaledmm.configs.files)."""

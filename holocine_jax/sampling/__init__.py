"""Sampling: flow-matching schedulers, classifier-free guidance with two experts, batch jobs."""

"""Sanity-check baselines for xplain, registered as methods through xplain's plugin hooks."""

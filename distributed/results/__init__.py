"""Scores and what a person reads, Ray-free: metrics, plots, the search report, the comparison of
runs."""

"""Barista's benchmarks. Each runs its own servers and prints medians beside a baseline
measured in the same run; ``python -m bench`` runs them all and updates docs/benchmarks.md."""

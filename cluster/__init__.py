"""Barista's cluster on network namespaces (issue 20): ``python -m cluster`` / ``make cluster``."""

"""A no-op RQ job, the baseline for dispatch throughput."""


def noop() -> None:
    return None

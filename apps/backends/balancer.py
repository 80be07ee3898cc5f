"""Chooses the backend for a prompt.

The walking skeleton's rule: weighted random choice among the enabled backends of the
alias. The scoring balancer of DESIGN.md decision 4 replaces it in the backends issue.
"""

from __future__ import annotations

import random

from apps.backends.models import Backend


def backend_pick(candidates: list[Backend], *, rng: random.Random | None = None) -> Backend | None:
    if not candidates:
        return None
    chooser = rng or random
    return chooser.choices(candidates, weights=[b.weight for b in candidates], k=1)[0]

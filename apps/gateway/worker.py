"""The gateway worker.

Walking skeleton: RQ's SimpleWorker (one prompt at a time per process, no fork), one
process per core. The concurrent asyncio worker of DESIGN.md decision 1 replaces it.
"""

from __future__ import annotations

from rq import SimpleWorker


class GatewayWorker(SimpleWorker):
    pass

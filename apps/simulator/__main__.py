"""Run a simulated OpenAI-compatible backend: ``python -m apps.simulator --port 9101``."""

from __future__ import annotations

import argparse
import dataclasses

import uvicorn

from apps.simulator.server import Simulator, SimulatorConfig


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Barista's simulated LLM backend.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9101)
    parser.add_argument(
        "--model",
        action="append",
        dest="models",
        help="model name served (repeatable); default sim-model",
    )
    parser.add_argument("--ttft", type=float, default=0.2, help="seconds to first token")
    parser.add_argument(
        "--tps",
        type=float,
        default=50.0,
        help="tokens per second after the first (0 = all at once)",
    )
    parser.add_argument("--tokens", type=int, default=60, help="answer length in tokens")
    parser.add_argument("--error-rate", type=float, default=0.0, help="share answered with 500")
    parser.add_argument("--hang-rate", type=float, default=0.0, help="share never answered")
    parser.add_argument(
        "--reset-rate", type=float, default=0.0, help="share whose connection drops mid-answer"
    )
    parser.add_argument(
        "--garbage-rate", type=float, default=0.0, help="share answered with malformed JSON/SSE"
    )
    parser.add_argument(
        "--max-concurrency", type=int, default=0, help="in-flight cap, 429 beyond it (0 = none)"
    )
    parser.add_argument(
        "--max-running",
        type=int,
        default=0,
        help="answered at once, the rest queue like vLLM's batch (0 = no limit)",
    )
    parser.add_argument(
        "--cut-after",
        type=int,
        default=0,
        help="drop the connection after this many streamed tokens (0 = never)",
    )
    parser.add_argument(
        "--fail-first", type=int, default=0, help="answer the first N requests with a 500"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--api-key",
        default="",
        help="require this bearer key on /v1/ routes (default: none); tests use it",
    )
    args = parser.parse_args(argv)
    # Every option is the config field of the same name.
    config = SimulatorConfig(models=args.models or ["sim-model"])
    config.update({f.name: getattr(args, f.name) for f in dataclasses.fields(config)})
    uvicorn.run(
        Simulator(config),
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_keep_alive=30,
    )


if __name__ == "__main__":
    main()

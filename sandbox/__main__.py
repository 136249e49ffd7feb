"""Run a sandbox as a process: ``python -m sandbox <name> [options]``.

Prints one JSON line ``{"url": ..., "seeded": ...}`` once serving (and writes it to ``--ready-file``), then
serves until SIGINT/SIGTERM and exits 0. A sandbox registers by adding its module to ``SANDBOXES``; the
module provides ``add_cli_arguments(parser)`` and ``from_cli_args(args) -> SandboxServer``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import sys
import threading
from pathlib import Path

SANDBOXES: dict[str, str] = {
    "kosli": "sandbox.kosli",
    "jenkins": "sandbox.jenkins",
    "circleci": "sandbox.circleci",
    "gitlab": "sandbox.gitlab",
    "github": "sandbox.github",
    "kubernetes": "sandbox.kubernetes",
    "gcp_secret_manager": "sandbox.gcp_secret_manager",
    "azure_key_vault": "sandbox.azure_key_vault",
}  # sub-command -> module


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sandbox", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="sandbox", required=True)
    for name, module_name in SANDBOXES.items():
        command = commands.add_parser(name, help=f"run the {name} sandbox")
        command.add_argument("--host", default="127.0.0.1")
        command.add_argument("--port", type=int, default=0, help="0 picks a free port")
        command.add_argument("--hour-seconds", type=float, default=3600.0, help="real seconds per service-hour")
        command.add_argument("--latency", type=float, default=0.0, help="seconds added before each request")
        command.add_argument("--seed", type=Path, help="JSON seed document (see the sandbox's seed_document)")
        command.add_argument("--ready-file", type=Path, help="also write the ready JSON line to this file")
        command.add_argument("--access-log", action="store_true", help="log each request to stderr")
        importlib.import_module(module_name).add_cli_arguments(command)
    return parser


def _write_atomically(path: Path, text: str) -> None:
    """Readers polling for the file never see it half-written."""
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(text)
    os.replace(partial, path)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    sandbox = importlib.import_module(SANDBOXES[args.sandbox]).from_cli_args(args)
    stop_requested = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop_requested.set())
    with sandbox.start(args.host, args.port):
        seeded = sandbox.seed_document(json.loads(args.seed.read_text())) if args.seed else {}
        ready_line = json.dumps({"url": sandbox.url, "seeded": seeded})
        if args.ready_file:
            _write_atomically(args.ready_file, ready_line + "\n")
        print(ready_line, flush=True)
        while not stop_requested.wait(0.2):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())

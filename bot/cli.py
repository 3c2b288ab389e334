"""The `upstream-bot` command line: serve, demo, run, check-config, config-schema, agent."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from commands.service import Outcome

if TYPE_CHECKING:
    from bot.config import Config

EXIT_OK, EXIT_REFUSED, EXIT_CONFIG, EXIT_FAILED = 0, 1, 2, 3
# Ctrl-C or SIGTERM during `run` (the first aborts a running release and waits for that abort, the
# second stops at once): 128 + SIGINT, as shells report an interrupted command, for SIGTERM too, so a
# pipeline tells "interrupted" from "failed" with one code. What is left drained is printed.
EXIT_INTERRUPTED = 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="upstream-bot", description="Slack ChatOps for Nginx upstreams in Consul")
    parser.add_argument("--config", help="config file (default: $UPSTREAM_BOT_CONFIG or ./upstream-bot.yml)")
    parser.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    # `--config` is taken before or after the subcommand: `upstream-bot check-config --config x.yml`.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS, help="config file")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", parents=[common], help="the bot: Socket Mode (SLACK_APP_TOKEN) or --http")
    serve.add_argument("--http", action="store_true", help="serve Slack's HTTP requests at POST /slack/events")
    serve.add_argument("--port", type=int, default=3000)
    serve.add_argument("--host", default="127.0.0.1")

    demo = sub.add_parser(
        "demo", parents=[common], help="local sandbox with a terminal chat (no Slack, no Consul needed)"
    )
    demo.add_argument("--base-port", type=int, default=9001, help="first sample service port (default 9001)")
    demo.add_argument("--yes", "-y", action="store_true", help="confirm every confirmation (scripted demos)")

    run = sub.add_parser(
        "run", parents=[common], help='one command from a shell or CI, e.g. run "/drain 10.0.0.5:9000" --yes'
    )
    run.add_argument("line", help='the command, e.g. "/upstream status app"')
    run.add_argument("--yes", "-y", action="store_true", help="confirm every confirmation")

    check = sub.add_parser("check-config", parents=[common], help="validate the config and the secrets it refers to")
    check.add_argument("--connect", action="store_true", help="also check that Consul answers")
    sub.add_parser(
        "config-schema", help="print the config's JSON Schema (docs/upstream-bot.schema.json), for editors"
    )

    agent = sub.add_parser(
        "agent", parents=[common], help="the per-node agent: runs the steps in its own --config agent.yml"
    )
    agent.add_argument("--check", action="store_true", help="validate agent.yml, say what it serves, and exit")
    return parser


def _load(args: argparse.Namespace) -> Config | None:
    # Imported here: the config's models take about a quarter of a second to build, which `agent` (its
    # own config) and `--help` need not pay.
    from bot.config import ConfigError, config_path, load_config

    path = config_path(args.config, os.environ)
    try:
        return load_config(path)
    except ConfigError as error:
        print(f"config {path} has {len(error.problems)} problem(s):", file=sys.stderr)
        for problem in error.problems:
            print(f"  {problem}", file=sys.stderr)
        return None


def _check_config(args: argparse.Namespace) -> int:
    config = _load(args)
    if config is None:
        return EXIT_CONFIG
    from bot.config import environment_problems

    problems, notes = environment_problems(config, os.environ)
    if args.connect:
        from bot.consul.store import ConsulStore
        from commands.errors import StoreError

        store = ConsulStore(config.consul.addresses, config.consul.prefix, config.consul.token, config.consul.timeout)
        for app in config.apps.values():
            try:
                asyncio.run(store.read(app.upstream))
            except StoreError as error:
                problems.append(f"apps.{app.name}: {error.message}")
    for note in notes:
        print(f"note: {note}")
    for problem in problems:
        print(f"problem: {problem}")
    if problems:
        print(f"{config.source}: {len(problems)} problem(s)")
        return EXIT_CONFIG
    print(f"{config.source}: OK ({len(config.apps)} app(s): {', '.join(sorted(config.apps)) or 'none'})")
    return EXIT_OK


def _agent(args: argparse.Namespace) -> int:
    from bot.agent.config import DEFAULT_PATH, AgentConfigError, load_agent_config
    from bot.agent.server import serve_agent

    path = args.config or os.environ.get("UPSTREAM_BOT_AGENT_CONFIG") or DEFAULT_PATH
    try:
        settings = load_agent_config(path)
    except AgentConfigError as error:
        print(f"agent config {path} has {len(error.problems)} problem(s):", file=sys.stderr)
        for problem in error.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_CONFIG
    if getattr(args, "check", False):
        transport = "TLS" if settings.tls_cert else "plain HTTP"
        nodes = ", ".join(map(str, settings.nodes))
        print(f"{path}: OK; {transport}; nodes: {nodes}; state_file: {settings.state_file}")
        if settings.insecure:
            print(
                f"warning: {path}: insecure: true: step names, targets and output cross the network unencrypted; "
                "serve TLS (tls: {cert, key}) outside a test bench"
            )
        return EXIT_OK
    try:
        asyncio.run(serve_agent(settings))
    except KeyboardInterrupt:
        pass
    return EXIT_OK


async def _run(config: Config, line: str, yes: bool) -> int:
    from bot.runtime import service_for
    from bot.terminal.frontend import TerminalFrontEnd

    async with service_for(config) as service:
        front = TerminalFrontEnd(service, assume_yes=yes)
        outcome = await front.run_interruptible(line)
    if front.interrupted or outcome is None:
        return EXIT_INTERRUPTED
    return {
        Outcome.DONE: EXIT_OK,
        Outcome.PENDING: EXIT_REFUSED,
        Outcome.REFUSED: EXIT_REFUSED,
        Outcome.FAILED: EXIT_FAILED,
    }[outcome]


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per probe would drown the log
    if args.command == "demo":
        from bot.terminal.demo import run_demo

        if getattr(args, "config", None):
            print(
                "error: demo runs on its own embedded config (sample services, a Consul stand-in); "
                "--config is for serve, run and check-config.",
                file=sys.stderr,
            )
            return EXIT_CONFIG

        try:
            return asyncio.run(run_demo(args.base_port, assume_yes=args.yes))
        except KeyboardInterrupt:
            return EXIT_OK
    if args.command == "check-config":
        return _check_config(args)
    if args.command == "config-schema":
        from bot.config import config_schema

        print(json.dumps(config_schema(), indent=2))
        return EXIT_OK
    if args.command == "agent":
        return _agent(args)
    config = _load(args)
    if config is None:
        return EXIT_CONFIG
    if args.command == "run":
        try:
            return asyncio.run(_run(config, args.line, args.yes))
        except KeyboardInterrupt:
            # Ctrl-C outside the command itself (connecting, shutting down): nothing was started by it.
            print("interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
    from bot.slack.serve import serve

    try:
        return asyncio.run(serve(config, http=args.http, host=args.host, port=args.port))
    except (KeyboardInterrupt, asyncio.CancelledError):  # Ctrl-C, or SIGTERM (serve cancels itself)
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

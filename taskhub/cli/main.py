"""``taskhub run | serve | worker | check | plugins | jobs | limits | status``.

``serve --workers N`` runs N server processes under a supervisor
(:mod:`taskhub.cli.supervisor`); each child is a ``taskhub serve`` handed its socket.

Exit codes: 0 after a clean run or shutdown (SIGINT and SIGTERM included); 2
for anything the user must fix in the command line, the config or a plugin; 1
when a component cannot start or fails while running. Errors print as one
readable message; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys
import traceback
from collections.abc import Callable, Coroutine, Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

try:
    import uvloop
except ImportError:  # pragma: no cover - a dependency everywhere but Windows
    uvloop = None  # type: ignore[assignment]

from taskhub.cli import jobs as jobs_cli
from taskhub.cli import limits as limits_cli
from taskhub.cli import status as status_cli
from taskhub.cli import supervisor
from taskhub.cli.group import number_in
from taskhub.cli.supervised import SupervisorLink
from taskhub.config.secrets import secret_values
from taskhub.context import Role
from taskhub.errors import ConfigError, PluginError, StartupError, TaskhubError, UsageError
from taskhub.hub.kernel import Hub
from taskhub.hub.plugins import PluginRegistry, load_plugins
from taskhub.hub.runtime import Runtime
from taskhub.monitoring import log_format
from taskhub.version import __version__

logger = logging.getLogger("taskhub")

# Libraries that log every job or request at INFO; quiet unless --debug.
CHATTY_LOGGERS = ("saq", "sanic.root", "sanic.access", "sanic.server")


port_number = number_in(
    int,
    0,
    65_535,
    noun="a number",
    out_of_range="{value} is not a port (0-65535; 0 picks a free one)",
)


MAX_PROCESSES = 4 * (os.cpu_count() or 1)
process_count = number_in(
    int,
    1,
    MAX_PROCESSES,
    noun="a number of processes",
    out_of_range=(
        f"{{value}} is out of range: 1 to {MAX_PROCESSES} server processes "
        f"(4 per CPU; this machine has {os.cpu_count() or 1})"
    ),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="taskhub",
        description="Admit tasks over HTTP, rate-limit them per user, run them on workers.",
    )
    parser.add_argument("--version", action="version", version=f"taskhub {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="DEBUG logs and full tracebacks")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str, handler: Callable[[argparse.Namespace], int]) -> Any:
        sub = commands.add_parser(name, help=help_text, description=help_text, parents=[common])
        sub.set_defaults(handler=handler)
        return sub

    for name, help_text, role in (
        ("run", "run the HTTP server and a worker in one process", Role.BOTH),
        ("serve", "run the HTTP server alone", Role.SERVER),
    ):
        sub = command(name, help_text, lambda args, role=role: run_hub(args, role))
        sub.add_argument("config", metavar="CONFIG", help="YAML config file")
        sub.add_argument("--host", help="listen address (overrides server.host)")
        sub.add_argument("--port", type=port_number, help="listen port (overrides server.port)")
        sub.add_argument(
            "--workers",
            type=process_count,
            default=1,
            metavar="N",
            help="server processes sharing the port (serve only; default 1: this process)",
        )
        if role is Role.SERVER:  # how `serve --workers N` hands each child its socket
            sub.add_argument("--listen-fd", type=int, help=argparse.SUPPRESS)
            sub.add_argument("--link-fd", type=int, help=argparse.SUPPRESS)
    sub = command("worker", "run a worker alone", lambda args: run_hub(args, Role.WORKER))
    sub.add_argument("config", metavar="CONFIG", help="YAML config file")
    sub.add_argument(
        "--metrics-port",
        type=port_number,
        help="port of the worker's /metrics (overrides metrics.worker_port)",
    )
    sub = command("check", "validate a config and print it resolved, secrets masked", check)
    sub.add_argument("config", metavar="CONFIG", help="YAML config file")
    sub = command("plugins", "list plugins and the components each registers", list_plugins)
    sub.add_argument("config", metavar="CONFIG", nargs="?", help="also load this config's plugins")
    jobs_cli.add_commands(commands, common)
    limits_cli.add_commands(commands, common)
    status_cli.add_command(commands, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging("INFO", args.debug)
    try:
        return int(args.handler(args))
    except (ConfigError, PluginError, UsageError) as exc:
        return report(exc, args.debug, 2)
    except StartupError as exc:
        return report(exc, args.debug, 1)
    except KeyboardInterrupt:
        return 130


def report(exc: TaskhubError, debug: bool, code: int) -> int:
    if debug:
        sys.stderr.write(log_format.masked("".join(traceback.format_exception(exc))))
    sys.stderr.write(log_format.masked(f"taskhub: error: {exc}\n"))
    return code


def configure_logging(
    level: str,
    debug: bool,
    kind: log_format.LogFormat = "text",
    secrets: Iterable[str] = (),
) -> None:
    log_format.install(kind, secrets)
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if debug else level)
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if debug else logging.WARNING)


def run_hub(args: argparse.Namespace, role: Role) -> int:
    overrides = {
        key: value
        for key, value in (
            ("host", getattr(args, "host", None)),
            ("port", getattr(args, "port", None)),
        )
        if value is not None
    }
    hub = Hub.from_file(args.config, server_overrides=overrides)
    metrics_port = getattr(args, "metrics_port", None)
    if metrics_port is not None:
        hub.settings.metrics.worker_port = metrics_port
    logs = hub.settings.logging
    configure_logging(logs.level, args.debug, logs.format, secret_values(hub.raw))
    workers = getattr(args, "workers", 1)
    if workers > 1:
        return serve_processes(hub, args, role, workers)
    hub.check_role(role)
    link = adopt_supervisor_fds(hub, args)
    run_async(Runtime(hub, role).run(on_started=link.started if link else None))
    return 0


def serve_processes(hub: Hub, args: argparse.Namespace, role: Role, workers: int) -> int:
    """``serve --workers N``: check what every child would check, bind, then supervise."""
    if role is not Role.SERVER:
        raise UsageError(
            f"--workers {workers}: `taskhub run` is one process by design (server and worker "
            f"together, the only mode memory:// supports). For several server processes run "
            f"`taskhub serve CONFIG --workers {workers}` and start `taskhub worker CONFIG` "
            "processes beside it"
        )
    if hub.embedded:
        raise UsageError(
            f"{hub.raw.source}: --workers {workers} needs a Redis server: redis.url is "
            "memory://, an embedded store inside one process that the other processes "
            "cannot see. Point redis.url at a Redis server (for example "
            "redis://127.0.0.1:6379), or run one process with `taskhub run`"
        )
    hub.check_role(role)
    child_args = [args.config]
    for flag, value in (("--host", args.host), ("--port", args.port)):
        if value is not None:
            child_args += [flag, str(value)]
    if args.debug:
        child_args.append("--debug")
    return supervisor.serve(
        hub.server.bind(),
        child_args,
        workers,
        hub.server.shutdown_grace,
        metrics=hub.settings.metrics.enabled,
    )


def adopt_supervisor_fds(hub: Hub, args: argparse.Namespace) -> SupervisorLink | None:
    """In a child of ``serve --workers N``: serve on the inherited socket, and keep the link."""
    listen_fd, link_fd = getattr(args, "listen_fd", None), getattr(args, "link_fd", None)
    if listen_fd is None and link_fd is None:
        return None
    if listen_fd is None or link_fd is None:
        raise UsageError("--listen-fd and --link-fd go together (serve --workers sets both)")
    try:
        hub.server.listen_socket = socket.socket(fileno=listen_fd)
        return SupervisorLink(link_fd)
    except OSError as exc:
        raise UsageError(f"--listen-fd/--link-fd: not inherited sockets ({exc})") from exc


def run_async(main: Coroutine[Any, Any, None]) -> None:
    """Run on uvloop where it is installed."""
    factory = uvloop.new_event_loop if uvloop is not None else None
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main)


def check(args: argparse.Namespace) -> int:
    hub = Hub.from_file(args.config)
    sys.stdout.write(f"# {args.config}: valid. Resolved, with defaults and secrets masked:\n")
    sys.stdout.write(yaml.safe_dump(hub.resolved(), sort_keys=False, allow_unicode=True))
    return 0


def list_plugins(args: argparse.Namespace) -> int:
    registry: PluginRegistry
    if args.config:
        registry = Hub.from_file(args.config).registry
    else:
        default_dir = Path("plugins")
        registry = load_plugins(default_dir if default_dir.is_dir() else None)
    for info in registry.plugins:
        sys.stdout.write(f"{info.name} ({info.source})\n")
        if not info.components:
            sys.stdout.write("  (registers no components)\n")
        for kind, names in info.components.items():
            sys.stdout.write(f"  {kind}: {', '.join(names)}\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

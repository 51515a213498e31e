"""``taskhub run | serve | worker | check | plugins | jobs | limits | status | submit``.

``serve --workers N`` runs N server processes under a supervisor
(:mod:`taskhub.cli.supervisor`); each child is a ``taskhub serve`` handed its socket.

Exit codes: 0 after a clean run or shutdown (SIGINT and SIGTERM included); 2
for anything the user must fix in the command line, the config or a plugin; 1
when a component cannot start or fails while running, and for an unexpected
exception (named with its command); 130 on Ctrl-C. Errors print as one readable
line; ``--debug`` adds the traceback. The commands are click's, in a
:class:`~taskhub.cli.group.Group` that gives each of them ``--debug``; plugins add
theirs through ``register_commands`` (:mod:`taskhub.cli.plugins`).
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import traceback
from collections.abc import Coroutine, Sequence
from typing import Any

import click
import yaml

try:
    import uvloop
except ImportError:  # pragma: no cover - a dependency everywhere but Windows
    uvloop = None  # type: ignore[assignment]

from taskhub.cli import supervisor
from taskhub.cli.group import (
    COMMAND,
    DEBUG,
    Group,
    NumberIn,
    config_argument,
    configure_logging,
    debugging,
)
from taskhub.cli.jobs import jobs
from taskhub.cli.limits import limits
from taskhub.cli.plugins import add_plugin_commands, plugins_command
from taskhub.cli.status import status
from taskhub.cli.submit import submit
from taskhub.cli.supervised import SupervisorLink
from taskhub.config.secrets import secret_values
from taskhub.context import Role
from taskhub.errors import ConfigError, PluginError, TaskhubError, UsageError
from taskhub.hub.kernel import Hub
from taskhub.hub.plugins import command_plugins, describe_error
from taskhub.hub.runtime import Runtime
from taskhub.monitoring import log_format
from taskhub.version import __version__

PORT_NUMBER = NumberIn(
    int,
    0,
    65_535,
    noun="a number",
    out_of_range="{value} is not a port (0-65535; 0 picks a free one)",
)


MAX_PROCESSES = 4 * (os.cpu_count() or 1)
PROCESS_COUNT = NumberIn(
    int,
    1,
    MAX_PROCESSES,
    noun="a number of processes",
    out_of_range=(
        f"{{value}} is out of range: 1 to {MAX_PROCESSES} server processes "
        f"(4 per CPU; this machine has {os.cpu_count() or 1})"
    ),
)

host_option = click.option("--host", metavar="HOST", help="listen address (overrides server.host)")
port_option = click.option(
    "--port", type=PORT_NUMBER, metavar="PORT", help="listen port (overrides server.port)"
)
workers_option = click.option(
    "--workers",
    type=PROCESS_COUNT,
    default=1,
    metavar="N",
    help="server processes sharing the port (serve only; default 1: this process)",
)


@click.command("run", help="run the HTTP server and a worker in one process")
@config_argument
@host_option
@port_option
@workers_option
def run_command(config: str, host: str | None, port: int | None, workers: int) -> int:
    return run_hub(Role.BOTH, config, host=host, port=port, workers=workers)


@click.command("serve", help="run the HTTP server alone")
@config_argument
@host_option
@port_option
@workers_option
# How `serve --workers N` hands each child its socket and its link.
@click.option("--listen-fd", type=int, hidden=True)
@click.option("--link-fd", type=int, hidden=True)
def serve_command(
    *,  # click passes every parameter by name
    config: str,
    host: str | None,
    port: int | None,
    workers: int,
    listen_fd: int | None,
    link_fd: int | None,
) -> int:
    return run_hub(
        Role.SERVER, config, host=host, port=port, workers=workers, fds=(listen_fd, link_fd)
    )


@click.command("worker", help="run a worker alone")
@config_argument
@click.option(
    "--metrics-port",
    type=PORT_NUMBER,
    metavar="PORT",
    help="port of the worker's /metrics (overrides metrics.worker_port)",
)
def worker_command(config: str, metrics_port: int | None) -> int:
    return run_hub(Role.WORKER, config, metrics_port=metrics_port)


@click.command("check", help="validate a config and print it resolved, secrets masked")
@config_argument
def check_command(config: str) -> int:
    hub = Hub.from_file(config)
    sys.stdout.write(f"# {config}: valid. Resolved, with defaults and secrets masked:\n")
    sys.stdout.write(yaml.safe_dump(hub.resolved(), sort_keys=False, allow_unicode=True))
    sys.stdout.write(
        "---\n# How each Redis is reached: its URL and redis: settings, redis-py's defaults "
        "filled in.\n"
    )
    connections = {"connections": hub.connection_settings()}
    sys.stdout.write(yaml.safe_dump(connections, sort_keys=False, allow_unicode=True))
    sys.stdout.flush()
    # What the servers say (eviction policy, shards per master): logged, on stderr.
    asyncio.run(hub.check_redis())
    return 0


BUILTIN_COMMANDS = (
    run_command,
    serve_command,
    worker_command,
    check_command,
    jobs,
    limits,
    status,
    submit,
)


def build_cli() -> Group:
    """The ``taskhub`` command: the built-in commands, then those plugins add."""

    @click.group("taskhub", cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
    @click.version_option(__version__, prog_name="taskhub", message="%(prog)s %(version)s")
    def cli() -> None:
        """Admit tasks over HTTP, rate-limit them per user, run them on workers."""

    manager, plugins = command_plugins()
    for command in (*BUILTIN_COMMANDS, plugins_command(manager, plugins)):
        cli.add_command(command)
    add_plugin_commands(cli, manager, plugins)
    return cli


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    configure_logging("INFO", debug=False)
    ctx: click.Context | None = None
    try:
        cli = build_cli()
        ctx = cli.make_context("taskhub", args)
        with ctx:
            result = cli.invoke(ctx)
        return result if isinstance(result, int) else 0
    except click.exceptions.Exit as exc:  # --help, --version
        return exc.exit_code
    except click.UsageError as exc:  # a bad command line: usage, hint and what was wrong
        exc.show()
        raise SystemExit(exc.exit_code) from None
    except (KeyboardInterrupt, click.Abort):
        return 130
    except Exception as exc:
        meta = ctx.meta if ctx is not None else {}
        # Before the command line is parsed (a plugin that fails to load), look for --debug.
        debug = bool(meta.get(DEBUG, "--debug" in args))
        return report(exc, debug, meta.get(COMMAND, "taskhub"))


def report(exc: Exception, debug: bool, command: str) -> int:
    """Print what went wrong as one line (after the traceback, with --debug); return the
    exit code: 2 for what the user must fix, 1 for what failed."""
    if debug:
        sys.stderr.write(log_format.masked("".join(traceback.format_exception(exc))))
    if isinstance(exc, click.ClickException):
        message = exc.format_message()
    elif isinstance(exc, TaskhubError):
        message = str(exc)
    else:  # a bug, in taskhub or a plugin's command
        hint = "" if debug else " (--debug shows the traceback)"
        message = f"`{command}` failed: {describe_error(exc)}{hint}"
    sys.stderr.write(log_format.masked(f"taskhub: error: {message}\n"))
    if isinstance(exc, ConfigError | PluginError | UsageError):
        return 2
    return exc.exit_code if isinstance(exc, click.ClickException) else 1


def run_hub(
    role: Role,
    config: str,
    *,
    host: str | None = None,
    port: int | None = None,
    workers: int = 1,
    metrics_port: int | None = None,
    fds: tuple[int | None, int | None] = (None, None),
) -> int:
    overrides = {key: value for key, value in (("host", host), ("port", port)) if value is not None}
    hub = Hub.from_file(config, server_overrides=overrides)
    if metrics_port is not None:
        hub.settings.metrics.worker_port = metrics_port
    logs = hub.settings.logging
    configure_logging(logs.level, debugging(), logs.format, secret_values(hub.raw))
    if workers > 1:
        return serve_processes(hub, role, workers, [config, *option_args(host=host, port=port)])
    hub.check_role(role)
    link = adopt_supervisor_fds(hub, *fds)
    runtime = Runtime(hub, role, redis_checked=link is not None)  # the supervisor checked
    run_async(runtime.run(on_started=link.started if link else None))
    return 0


def option_args(**options: object) -> list[str]:
    """``--name value`` for each option given, and ``--debug`` if this command line has it."""
    args = []
    for name, value in options.items():
        if value is not None:
            args += [f"--{name}", str(value)]
    return [*args, "--debug"] if debugging() else args


def serve_processes(hub: Hub, role: Role, workers: int, child_args: list[str]) -> int:
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
    asyncio.run(hub.check_redis())  # once for every process, not once in each
    return supervisor.serve(
        hub.server.bind(),
        child_args,
        workers,
        hub.server.shutdown_grace,
        metrics=hub.settings.metrics.enabled,
    )


def adopt_supervisor_fds(
    hub: Hub, listen_fd: int | None, link_fd: int | None
) -> SupervisorLink | None:
    """In a child of ``serve --workers N``: serve on the inherited socket, and keep the link."""
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""Errors a user can act on: each carries a message that says what to fix."""

from __future__ import annotations

from dataclasses import dataclass


class TaskhubError(Exception):
    """Base class: the message is meant for the user, not a traceback."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a config: where (YAML path and line) and what."""

    path: str
    message: str
    line: int | None = None

    def render(self) -> str:
        where = f"line {self.line}: " if self.line else ""
        path = self.path or "(top level)"
        return f"{where}{path}: {self.message}"


class ConfigError(TaskhubError):
    """The config file cannot be used; lists every problem found, not just the first."""

    def __init__(self, source: str, problems: list[Problem]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(self.render())

    def render(self) -> str:
        if len(self.problems) == 1:
            return f"{self.source}: {self.problems[0].render()}"
        lines = [f"{self.source}: {len(self.problems)} problems"]
        lines += [f"  {p.render()}" for p in self.problems]
        return "\n".join(lines)


class PluginError(TaskhubError):
    """A plugin failed to import, registered a bad component, or clashed with another."""


class UnknownComponentError(PluginError):
    """Config asked for a component name no plugin registers."""

    def __init__(self, kind: str, name: str, choices: list[str]) -> None:
        self.kind = kind
        self.name = name
        self.choices = choices
        listed = ", ".join(sorted(choices)) or "(none registered)"
        super().__init__(f"Unknown {kind} {name!r}. Choose one of: {listed}")


class BackendUnavailable(TaskhubError):
    """Redis (or another backend) cannot be reached right now; the caller may retry."""


class StartupError(TaskhubError):
    """A component could not start (port taken, file not writable): exit code 1."""


class UsageError(TaskhubError):
    """The command cannot work with this config: exit code 2."""


class UnstorablePayload(TaskhubError):
    """A payload that is valid JSON but that the queue cannot store (an integer over 64
    bits, say). Queue plugins raise it from ``prepare``; the client gets a 422 naming
    ``payload`` and ``reason``, and nothing is charged or queued."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

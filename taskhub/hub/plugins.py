"""Build the plugin manager and collect every component the plugins register.

Plugins come from four places, in this order: the built-ins inside the package,
installed distributions (entry-point group ``taskhub``), the ``plugins_dir``
folder, and dotted module paths listed in config. All of them go through the
same hooks. Any failure (an import error, a bad registration, two plugins
claiming one name) is a :class:`PluginError` that names the plugin.

The command line loads plugins before it knows a config (:func:`command_plugins`),
so that they can add commands. A plugin file is imported once per process, as
``import`` would: the config loading the same ``plugins_dir`` again reuses its
modules instead of running them twice.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging
import re
import sys
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy
from pydantic import BaseModel

from taskhub import hookspecs
from taskhub.components import Component, Limiter, TaskHandler
from taskhub.config.models import DEFAULT_PLUGINS_DIR, JOB_OPTIONS
from taskhub.errors import PluginError, UnknownComponentError
from taskhub.hookspecs import KINDS, Kind

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "taskhub"
BUILTIN_MODULES = (
    "taskhub.builtin.limiters.token_bucket",
    "taskhub.builtin.limiters.fixed_window",
    "taskhub.builtin.limiters.sliding_window",
    "taskhub.builtin.limiters.gcra",
    "taskhub.builtin.limiters.concurrency",
    "taskhub.builtin.tasks.log_completion",
    "taskhub.builtin.sinks.file_log",
    "taskhub.builtin.sinks.console",
    "taskhub.builtin.sinks.webhook",
    "taskhub.builtin.saq.queue",
    "taskhub.builtin.sanic.server",
    "taskhub.builtin.httptools.server",
    "taskhub.builtin.auth.none",
    "taskhub.builtin.auth.api_key",
)
LOCAL_PACKAGE = "taskhub_local_plugins"
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]*$")
# Options of a task entry that the kernel keeps for itself (see config.TaskSection).
RESERVED_TASK_OPTIONS = frozenset({"type", "cost", "priority", *JOB_OPTIONS})


@dataclass(frozen=True)
class Registration:
    """A component class and the plugin that registered it."""

    cls: type[Component]
    plugin: str


@dataclass
class PluginInfo:
    """A loaded plugin, where it came from, and what it registers."""

    name: str
    source: str
    components: dict[str, list[str]] = field(default_factory=dict)
    commands: list[str] = field(default_factory=list)  # filled by the CLI (register_commands)


class PluginRegistry:
    """Every registered component, by kind and name."""

    def __init__(self, manager: pluggy.PluginManager, plugins: list[PluginInfo]) -> None:
        self.manager = manager
        self.plugins = plugins
        self._by_kind: dict[str, dict[str, Registration]] = {kind: {} for kind in KINDS}
        by_name = {info.name: info for info in plugins}
        for kind in KINDS.values():
            hook = getattr(manager.hook, kind.hook.__name__)
            for impl in hook.get_hookimpls():
                self._call_register_hook(kind, impl, by_name.get(impl.plugin_name))

    def _call_register_hook(
        self, kind: Kind, impl: pluggy.HookImpl, info: PluginInfo | None
    ) -> None:
        def register(cls: type[Component]) -> None:
            self._add(kind, cls, impl.plugin_name)
            if info is not None:
                info.components.setdefault(kind.name, []).append(cls.name)

        call_impl(kind.hook.__name__, impl, register=register)

    def _add(self, kind: Kind, cls: Any, plugin: str) -> None:
        base, kind_name = kind.base, kind.name
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise PluginError(
                f"Plugin {plugin!r} registered {cls!r} as a {kind_name}, "
                f"but it is not a subclass of taskhub.{base.__name__}"
            )
        name = cls.name
        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            raise PluginError(
                f"Plugin {plugin!r} registered {cls.__qualname__} with name {name!r}: "
                "a component name must be lower-case letters, digits and '_', "
                "starting with a letter"
            )
        if not (isinstance(cls.Config, type) and issubclass(cls.Config, BaseModel)):
            raise PluginError(
                f"Plugin {plugin!r}: {kind_name} {name!r} has a Config that is not a pydantic model"
            )
        if issubclass(cls, Limiter) and not cls.lua.strip():
            raise PluginError(f"Plugin {plugin!r}: limiter {name!r} defines no lua")
        if issubclass(cls, TaskHandler):
            clash = RESERVED_TASK_OPTIONS & set(cls.Config.model_fields)
            if clash:
                raise PluginError(
                    f"Plugin {plugin!r}: handler {name!r} declares option(s) "
                    f"{', '.join(sorted(clash))}, which task entries reserve for the kernel"
                )
        existing = self._by_kind[kind_name].get(name)
        if existing is not None:
            raise PluginError(
                f"{kind_name.capitalize()} {name!r} is registered by both {existing.plugin!r} "
                f"and {plugin!r}: rename one of them, or remove one plugin"
            )
        self._by_kind[kind_name][name] = Registration(cls, plugin)

    def names(self, kind: str) -> list[str]:
        return sorted(self._by_kind[kind])

    def get(self, kind: str, name: str) -> type[Component]:
        try:
            return self._by_kind[kind][name].cls
        except KeyError:
            raise UnknownComponentError(kind, name, self.names(kind)) from None

    def registration(self, kind: str, name: str) -> Registration:
        self.get(kind, name)
        return self._by_kind[kind][name]


def call_impl(hook_name: str, impl: pluggy.HookImpl, **kwargs: object) -> object:
    """Call one plugin's implementation of a hook; a failure is a PluginError naming it."""
    try:
        return impl.function(**kwargs)
    except PluginError:
        raise
    except Exception as exc:
        raise PluginError(
            f"Plugin {impl.plugin_name!r} failed in {hook_name}: {type(exc).__name__}: {exc}"
        ) from exc


def load_plugins(
    plugins_dir: Path | None = None,
    modules: Iterable[str] = (),
    *,
    entry_points: bool = True,
) -> PluginRegistry:
    """Load every plugin source and return the registry of their components."""
    return PluginRegistry(*plugin_manager(plugins_dir, modules, entry_points=entry_points))


def command_plugins() -> tuple[pluggy.PluginManager, list[PluginInfo]]:
    """The plugins that may add commands, loaded before the command line is parsed: entry
    points and ``./plugins`` (a config's own are not known yet). The built-ins add none, and
    importing them (Sanic, SAQ) would cost every ``taskhub --help`` about 100 ms."""
    return plugin_manager(default_plugins_dir(), builtins=False)


def default_plugins_dir() -> Path | None:
    """``./plugins``, if the working directory has one."""
    default_dir = Path(DEFAULT_PLUGINS_DIR)
    return default_dir if default_dir.is_dir() else None


def plugin_manager(
    plugins_dir: Path | None = None,
    modules: Iterable[str] = (),
    *,
    entry_points: bool = True,
    builtins: bool = True,
) -> tuple[pluggy.PluginManager, list[PluginInfo]]:
    """Import every plugin source and register it: the manager, and each plugin's origin."""
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    plugins: list[PluginInfo] = []

    def add(obj: object, name: str, source: str) -> None:
        try:
            manager.register(obj, name=name)
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"Plugin {name!r} is invalid: {exc}") from exc
        except ValueError as exc:  # the same module or name registered twice
            raise PluginError(f"Plugin {name!r} is loaded twice: {exc}") from exc
        plugins.append(PluginInfo(name=name, source=source))

    for module_name in BUILTIN_MODULES if builtins else ():
        add(importlib.import_module(module_name), module_name, "built-in")
    if entry_points:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist else "unknown distribution"
            label = f"{ep.name} ({dist})"
            add(_guarded_import(label, ep.load), label, "entry point")
    if plugins_dir is not None:
        for path in _plugin_files(plugins_dir):
            label = _display_path(path)
            add(_guarded_import(label, lambda p=path: _import_file(p)), label, "plugins_dir")
    for dotted in dict.fromkeys(modules):
        add(_guarded_import(dotted, lambda d=dotted: importlib.import_module(d)), dotted, "config")

    try:
        manager.check_pending()
    except pluggy.PluginValidationError as exc:
        name = manager.get_name(exc.plugin) or repr(exc.plugin)
        problem = str(exc).split(" in plugin ", 1)[0]
        raise PluginError(
            f"Plugin {name!r} implements a hook taskhub does not define ({problem}). "
            f"Known hooks: {', '.join(_hook_names())}"
        ) from exc
    return manager, plugins


def _hook_names() -> list[str]:
    return sorted(
        name
        for name in dir(hookspecs)
        if hasattr(getattr(hookspecs, name), f"{hookspecs.PROJECT}_spec")
    )


def _plugin_files(directory: Path) -> list[Path]:
    """Modules and packages in ``directory``; names starting with ``_`` or ``.`` are skipped."""
    if not directory.is_dir():
        logger.warning("plugins_dir %s does not exist; no local plugins loaded", directory)
        return []
    found = []
    for entry in sorted(directory.iterdir()):
        if entry.name.startswith(("_", ".")):
            continue
        is_module = entry.is_file() and entry.suffix == ".py"
        is_package = entry.is_dir() and (entry / "__init__.py").is_file()
        if is_module or is_package:
            found.append(entry)
    return found


def _import_file(path: Path) -> ModuleType:
    """Import a plugin file or package under a private namespace, without touching sys.path;
    once per process, as ``import`` would (the CLI and the config may both name it)."""
    module_name = f"{LOCAL_PACKAGE}.{path.stem if path.is_file() else path.name}"
    source = path / "__init__.py" if path.is_dir() else path
    imported = sys.modules.get(module_name)
    if imported is not None and Path(imported.__file__ or "").resolve() == source.resolve():
        return imported
    if path.is_dir():
        spec = importlib.util.spec_from_file_location(
            module_name, source, submodule_search_locations=[str(path)]
        )
    else:
        spec = importlib.util.spec_from_file_location(module_name, source)
    if spec is None or spec.loader is None:  # pragma: no cover - only for exotic files
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    return module


def _guarded_import(label: str, load: Any) -> Any:
    """Run ``load`` and turn any failure into a PluginError that says where it broke."""
    try:
        return load()
    except Exception as exc:
        raise PluginError(f"Plugin {label!r} failed to import: {describe_error(exc)}") from exc


def describe_error(exc: BaseException) -> str:
    """``Type: message (file, line N)``: where in its code a plugin (or anything) failed."""
    if isinstance(exc, SyntaxError):
        return f"SyntaxError: {exc.msg} ({exc.filename}, line {exc.lineno})"
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith("<")]
    where = f" ({frames[-1].filename}, line {frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


def _display_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)

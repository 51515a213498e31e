"""Config loading: interpolation, defaults, and errors that name the YAML path and line."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from taskhub.cli.main import main
from taskhub.cli.status import status
from taskhub.components import Limiter, RatePolicy
from taskhub.config.loader import load_text
from taskhub.config.models import parse_settings
from taskhub.config.secrets import mask_url
from taskhub.errors import ConfigError
from taskhub.hub.kernel import Hub
from taskhub.hub.plugins import load_plugins
from taskhub.version import __version__
from tests.support.configs import ROOT


def hub_from(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Hub:
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent(text))
    return Hub.from_file(path, env=env or {})


def errors_of(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        hub_from(tmp_path, text, env)
    return caught.value


def test_example_config_is_valid_and_matches_the_documented_shape(tmp_path: Path) -> None:
    hub = Hub.from_file(ROOT / "config.example.yaml", env={})
    resolved = hub.resolved()
    assert resolved["redis"]["url"] == "memory://"
    server = resolved["server"]
    assert (server["type"], server["host"], server["port"]) == ("sanic", "127.0.0.1", 3000)
    (rule,) = resolved["limits"]["admission"]
    assert rule == {
        "name": "token_bucket",
        "key": "user",
        "shadow": False,
        "type": "token_bucket",
        "capacity": 20,
        "refill": 20.0,
        "period": 60.0,
        "block": 1.0,
    }
    assert resolved["limits"]["admin"] == {"enabled": False, "token": ""}
    assert "# token: ${TASKHUB_ADMIN_TOKEN}" in (ROOT / "config.example.yaml").read_text()
    assert resolved["queue"]["name"] == "tasks" and resolved["queue"]["concurrency"] == 10
    assert [s["type"] for s in resolved["sinks"]] == ["file_log", "console"]
    assert resolved["sinks"][0]["path"] == "task.log"


def test_an_empty_file_means_all_defaults(tmp_path: Path) -> None:
    hub = hub_from(tmp_path, "")
    assert [(r.name, r.source, r.limiter.name) for r in hub.rules] == [
        ("token_bucket", "user", "token_bucket")
    ]
    assert hub.queue.name == "saq" and hub.server.name == "sanic"
    assert [s.name for s in hub.sinks] == ["file_log"]
    assert list(hub.tasks) == ["log_completion"]


def test_interpolation_with_defaults_and_escapes() -> None:
    raw = load_text(
        textwrap.dedent(
            """
            redis:
              url: redis://:${REDIS_PASSWORD}@${REDIS_HOST:-localhost}:6379/0
            plugins_dir: ${EMPTY:-fallback}
            plugins: ["$${NOT_A_VAR}", "${UNSET_WITH_EMPTY_DEFAULT:-}"]
            """
        ),
        "inline",
        {"REDIS_PASSWORD": "s3cret", "EMPTY": ""},
    )
    settings = parse_settings(raw)
    assert settings.redis.url == "redis://:s3cret@localhost:6379/0"
    assert settings.plugins_dir == "fallback"  # ":-" also applies to an empty variable
    assert settings.plugins == ["${NOT_A_VAR}", ""]


def test_environment_values_cannot_change_the_yaml_structure() -> None:
    raw = load_text("plugins_dir: ${X}\n", "inline", {"X": "a\nplugins: [evil]"})
    settings = parse_settings(raw)
    assert settings.plugins == [] and settings.plugins_dir == "a\nplugins: [evil]"


def test_missing_variable_names_it_and_the_path(tmp_path: Path) -> None:
    error = errors_of(tmp_path, "redis:\n  url: redis://:${REDIS_PASSWORD}@host\n")
    assert "line 2: redis.url: environment variable REDIS_PASSWORD is not set" in str(error)


def test_malformed_interpolation(tmp_path: Path) -> None:
    error = errors_of(tmp_path, "plugins_dir: ${1BAD}\n")
    assert "plugins_dir: malformed '${1BAD}'" in str(error)


def test_bad_option_reports_path_line_value_and_rule(tmp_path: Path) -> None:
    error = errors_of(
        tmp_path,
        """\
        limiter:
          type: token_bucket
          capacity: -5
        """,
    )
    assert str(error).endswith(
        "line 3: limiter.capacity: input should be greater than or equal to 1 (got -5)"
    )


def test_bad_queue_shards_name_the_field_and_what_is_allowed(tmp_path: Path) -> None:
    text = "queue:\n  type: saq\n  shards: {shards}\n  shard_by: {by}\n"
    error = str(errors_of(tmp_path, text.format(shards=0, by="sideways")))
    assert "line 3: queue.shards: input should be greater than or equal to 1 (got 0)" in error
    assert "line 4: queue.shard_by: input should be 'user' or 'round_robin'" in error
    error = str(errors_of(tmp_path, text.format(shards=1025, by="user")))
    assert "queue.shards: input should be less than or equal to 1024 (got 1025)" in error


def test_a_bad_eviction_setting_names_the_field_and_what_is_allowed(tmp_path: Path) -> None:
    error = str(errors_of(tmp_path, "redis:\n  url: memory://\n  eviction: ignore\n"))
    assert "line 3: redis.eviction: input should be 'warn' or 'error'" in error


def test_wrong_type_option(tmp_path: Path) -> None:
    error = errors_of(tmp_path, "server:\n  port: lots\n")
    assert "line 2: server.port: input should be a valid integer" in str(error)
    assert "(got 'lots')" in str(error)


def test_unknown_option_lists_the_allowed_ones(tmp_path: Path) -> None:
    error = errors_of(tmp_path, "limiter:\n  type: token_bucket\n  capcity: 20\n")
    assert (
        "line 3: limiter.capcity: unknown option 'capcity'; "
        "allowed here: block, capacity, period, refill"
    ) in str(error)


def test_unknown_top_level_key(tmp_path: Path) -> None:
    error = errors_of(tmp_path, "redis:\n  url: memory://\nlimitter: {}\n")
    message = str(error)
    assert "line 3: limitter: unknown option 'limitter'; allowed here:" in message
    assert "limiter" in message


def test_unknown_component_lists_the_choices(tmp_path: Path) -> None:
    error = errors_of(tmp_path, "limiter:\n  type: leaky\n")
    assert (
        "line 2: limiter.type: Unknown limiter 'leaky'. Choose one of: "
        "concurrency, daily_quota, fixed_window, gcra, sliding_window, token_bucket"
    ) in str(error)


def only_rule(hub: Hub) -> tuple[dict[str, Any], Limiter]:
    (resolved,) = hub.resolved()["limits"]["admission"]
    (rule,) = hub.rules
    return {k: v for k, v in resolved.items() if k not in ("name", "key", "shadow")}, rule.limiter


def test_the_new_strategies_are_chosen_by_the_limiter_block(tmp_path: Path) -> None:
    hub = hub_from(tmp_path, "limiter: {type: sliding_window, limit: 5, period: 10, block: 2}\n")
    resolved, limiter = only_rule(hub)
    assert resolved == {"type": "sliding_window", "limit": 5, "period": 10.0, "block": 2.0}
    assert limiter.policy() == RatePolicy(limit=5, window=10)
    hub = hub_from(tmp_path, "limiter: {type: gcra, max_burst: 4, rate: 1, period: 2}\n")
    resolved, limiter = only_rule(hub)
    assert resolved == {"type": "gcra", "max_burst": 4, "rate": 1, "period": 2.0}
    assert limiter.policy() == RatePolicy(limit=5, window=10)  # 5, one every 2 s
    assert limiter.params() == [2_000, 10_000, 5]


def test_sliding_window_periods_are_whole_milliseconds(tmp_path: Path) -> None:
    error = errors_of(tmp_path, "limiter:\n  type: sliding_window\n  period: 0.0005\n")
    assert "line 3: limiter.period: input should be greater than or equal to 0.001" in str(error)
    error = errors_of(tmp_path, "limiter:\n  type: sliding_window\n  period: 1.0005\n")
    assert "line 3: limiter.period: value error, must be a whole number of milliseconds" in str(
        error
    )
    hub = hub_from(tmp_path, "limiter: {type: sliding_window, period: 1.1, block: 0.25}\n")
    assert only_rule(hub)[1].params() == [20, 1_100, 250]  # not 1100.0000000000002


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    error = errors_of(
        tmp_path,
        """\
        limiter: {type: token_bucket, capacity: 0}
        queue: {concurrency: 0}
        sinks:
          - type: file_log
            path: ""
          - type: nope
        """,
    )
    paths = [p.path for p in error.problems]
    assert paths == ["limiter.capacity", "queue.concurrency", "sinks[0].path", "sinks[1].type"]
    assert str(error).startswith(f"{error.source}: 4 problems")


def test_task_options_are_validated_by_the_handler(tmp_path: Path) -> None:
    config = "tasks:\n  count_words: {%s}\nplugins_dir: %s\n"
    error = errors_of(tmp_path, config % ("retries: 0", ROOT / "plugins"))
    assert "tasks.count_words.retries: input should be greater than or equal to 1" in str(error)
    error = errors_of(tmp_path, config % ("min_length: 0", ROOT / "plugins"))
    assert "tasks.count_words.min_length: input should be greater than or equal to 1" in str(error)


def test_unknown_handler_and_default_task(tmp_path: Path) -> None:
    error = errors_of(tmp_path, "tasks:\n  resize: {}\n")
    assert "tasks.resize.type: Unknown handler 'resize'. Choose one of:" in str(error)
    assert "default_task: 'log_completion' is not in tasks (defined: resize)" in str(error)


def test_bad_task_name(tmp_path: Path) -> None:
    error = errors_of(tmp_path, "tasks:\n  'bad name!': {}\n")
    assert "task name 'bad name!' must start with a letter" in str(error)


def test_redis_url_scheme_is_checked_and_password_masked(tmp_path: Path) -> None:
    error = errors_of(tmp_path, "redis:\n  url: http://user:hunter2@host\n")
    message = str(error)
    assert "redis.url: value error, unsupported URL 'http://user:***@host'" in message
    assert "hunter2" not in message


@pytest.mark.parametrize(
    ("redis", "expected"),
    [
        ("{cluster: true}", "redis.url: value error, unsupported URL 'memory://' with cluster"),
        ("{cluster: true, url: 'unix:///run/r.sock'}", "use redis:// or rediss://"),
        (
            "{cluster: true, url: 'redis://:pw@h:7000/3'}",
            "redis.url: value error, URL 'redis://:***@h:7000/3' selects db 3, but a Redis "
            "Cluster has only db 0",
        ),
        (
            "{cluster: true, url: 'redis://h:7000', nodes: [redis://a:1, 'redis://b:2?db=1']}",
            "redis.nodes[1]: value error, URL 'redis://b:2?db=1' selects db 1",
        ),
        ("{url: 'redis://h:7000', nodes: [redis://a:1]}", "redis.nodes: value error, nodes are"),
    ],
)
def test_cluster_settings_are_checked(tmp_path: Path, redis: str, expected: str) -> None:
    error = str(errors_of(tmp_path, f"redis: {redis}\n"))
    assert expected in error
    assert "pw" not in error


def test_a_cluster_url_with_db_0_and_seed_nodes_is_valid(tmp_path: Path) -> None:
    text = "redis: {cluster: true, url: 'redis://h:7000/0', nodes: ['redis://a:1']}\n"
    hub = hub_from(tmp_path, text)
    assert hub.settings.redis.nodes == ["redis://a:1"]
    assert hub.connections.endpoints.redis is not None
    assert hub.connections.endpoints.redis.seeds == (("h", 7000), ("a", 1))


def test_a_seed_node_is_reached_as_url_is(tmp_path: Path) -> None:
    text = "redis:\n  cluster: true\n  url: redis://h:7000\n  nodes: ['rediss://u:p@a:1']\n"
    error = str(errors_of(tmp_path, text))
    assert "line 4: redis.nodes[0]: rediss://a:1 is rediss:// but redis.url is redis://" in error
    text = "redis:\n  cluster: true\n  url: redis://h:7000\n  nodes: ['redis://a:1?db=0']\n"
    error = str(errors_of(tmp_path, text))
    assert "redis.nodes[0]: redis://a:1: a seed node gives only host and port" in error


def test_secret_values_never_appear_in_errors(tmp_path: Path) -> None:
    error = errors_of(tmp_path, "server:\n  port: ${API_TOKEN}\n", env={"API_TOKEN": "tok-123456"})
    assert "server.port" in str(error) and "tok-123456" not in str(error)


def test_duplicate_keys_are_errors(tmp_path: Path) -> None:
    error = errors_of(tmp_path, "limiter: {}\nqueue: {}\nlimiter: {}\n")
    assert "line 3: limiter: duplicate key" in str(error)


def test_yaml_syntax_error_has_a_line(tmp_path: Path) -> None:
    error = errors_of(tmp_path, "server:\n  port: 3000\n   host: x\n")
    assert "line 3: (top level): not valid YAML" in str(error)


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    error = errors_of(tmp_path, "- a\n- b\n")
    assert "must be a mapping of options, not a list" in str(error)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        Hub.from_file(tmp_path / "absent.yaml")


def test_mask_url() -> None:
    assert mask_url("redis://:pw@host:6379/0") == "redis://:***@host:6379/0"
    assert mask_url("rediss://user:pw@host") == "rediss://user:***@host"
    assert mask_url("redis://host:6379") == "redis://host:6379"


# --------------------------------------------------------------------------- the CLI


def test_check_prints_the_resolved_config_with_secrets_masked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_PASSWORD", "hunter2")
    monkeypatch.setenv("MY_TOKEN", "tok-abc")
    path = tmp_path / "c.yaml"
    path.write_text(
        "redis:\n  url: redis://:${REDIS_PASSWORD}@localhost:6379/0\n"
        "plugins: ['${MY_TOKEN:-x}']\n"
        "plugins_dir: null\n"
    )
    # MY_TOKEN names a module here only to show that secret-looking variables are masked.
    monkeypatch.setattr("taskhub.hub.kernel.load_plugins", _builtins_only)
    assert main(["check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "url: redis://:***@localhost:6379/0" in out
    assert "hunter2" not in out and "tok-abc" not in out
    assert "capacity: 20" in out


def _builtins_only(plugins_dir: object, modules: object) -> object:
    return load_plugins(None, ())


def test_config_error_exits_2_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("limiter:\n  capacity: many\n")
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "taskhub: error:" in err and "limiter.capacity" in err
    assert "Traceback" not in err


def test_debug_adds_the_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("limiter:\n  capacity: many\n")
    assert main(["check", str(path), "--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run"], "Missing argument 'CONFIG'."),
        (["run", "c.yaml", "--port", "70000"], "70000 is not a port"),
        (["run", "c.yaml", "--port", "abc"], "'abc' is not a number"),
        (["launch", "c.yaml"], "No such command 'launch'. The commands are: check, jobs,"),
    ],
)
def test_bad_flags_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["jobs", "retry", "c.yaml"], "give the IDs of the dead letters to retry, or --all"),
        (["jobs", "retry", "c.yaml", "abc", "--all"], "give job IDs or --all, not both"),
    ],
)
def test_retry_needs_ids_or_all_before_opening_anything(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(argv)  # c.yaml does not exist: the usage error comes first
    assert caught.value.code == 2
    assert message in capsys.readouterr().err


def test_help_and_version_exit_0_and_hide_the_supervisor_flags(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"taskhub {__version__}\n"
    assert main(["--help"]) == 0
    listed = capsys.readouterr().out
    for command in ("run", "serve", "worker", "check", "plugins", "jobs", "limits", "status"):
        assert f"\n  {command} " in listed
    assert main(["serve", "-h"]) == 0
    usage = capsys.readouterr().out
    assert "--workers N" in usage and "--debug" in usage and "CONFIG  YAML config file" in usage
    assert "--listen-fd" not in usage and "--link-fd" not in usage


@pytest.mark.parametrize(
    ("argv", "watch"),
    [([], None), (["--watch"], 2.0), (["--watch", "--json"], 2.0), (["--watch", "0.5"], 0.5)],
)
def test_status_watch_takes_an_optional_number_of_seconds(
    argv: list[str], watch: float | None
) -> None:
    with status.make_context("status", ["c.yaml", *argv]) as ctx:
        assert ctx.params["watch"] == watch


def test_embedded_redis_needs_run_not_serve(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("redis: {url: 'memory://'}\n")
    assert main(["serve", str(path)]) == 2
    assert "use `taskhub run`" in capsys.readouterr().err
    assert main(["worker", str(path)]) == 2


POLICY_PROBLEMS = """\
limiter: {type: token_bucket}
limits:
  fail_mode: open
  admission:
    - {name: per_user, type: token_bucket, capacity: 5}
    - {name: per_user, key: header:X-Api-Key, type: fixed_window}
  execution:
    - {key: ip, type: token_bucket}
tasks:
  log_completion: {cost: 6}
"""


def test_limits_shape_problems_name_the_key_and_what_is_allowed(tmp_path: Path) -> None:
    text = POLICY_PROBLEMS.replace(
        "  execution:",
        "    - {key: cookie, type: gcra}\n"
        "  trusted_proxies: [10.0.0.0/8, proxy.local]\n"
        "  admin: {enabled: true}\n"
        "  execution:",
    )
    message = str(errors_of(tmp_path, text))
    for expected in (
        "limits.admission[2].key: value error, unknown key 'cookie'; use one of: "
        "user, ip, task, constant, header:<Name>",
        "limits.trusted_proxies: value error, 'proxy.local' is not an IP address or network",
        "limits.admin: value error, admin.enabled needs admin.token of at least 16 characters",
    ):
        assert expected in message, message


def test_a_rejected_mapping_is_echoed_with_its_secrets_masked(tmp_path: Path) -> None:
    for token, env in (
        ("short-secret", {}),
        ("${TASKHUB_ADMIN_TOKEN}", {"TASKHUB_ADMIN_TOKEN": "tiny"}),
    ):
        text = f'limits:\n  admin: {{enabled: true, token: "{token}"}}\n'
        message = str(errors_of(tmp_path, text, env))
        assert "(got {'enabled': True, 'token': '***'})" in message, message
        assert "short-secret" not in message and "tiny" not in message


def test_policy_problems_are_reported_together_with_their_lines(tmp_path: Path) -> None:
    # the kernel's checks, once the file's shape is valid
    message = str(errors_of(tmp_path, POLICY_PROBLEMS))
    for expected in (
        "line 1: limiter: give either limiter (one rule per user) or limits.admission, not both",
        "line 3: limits.fail_mode: 'open' needs limits.redis_url",
        "line 6: limits.admission[1].name: duplicate rule name 'per_user'",
        "line 8: limits.execution[0].key: 'ip' is not known on a worker; "
        "use one of: user, task, constant",
        "line 10: tasks.log_completion.cost: cost 6 is more than rule 'per_user' ever allows (5)",
    ):
        assert expected in message, message


def test_admission_and_execution_rules_may_not_share_a_name(tmp_path: Path) -> None:
    # Same name, same strategy: both stages would count in one Redis key.
    message = str(
        errors_of(
            tmp_path,
            """\
            limits:
              admission:
                - {name: per_user, type: token_bucket}
              execution:
                - {name: per_user, type: token_bucket, block: 0}
                - {type: gcra}
            """,
        )
    )
    assert "line 5: limits.execution[0].name: rule name 'per_user' is also an admission" in message
    assert "execution[1]" not in message  # 'user', derived from the key, is free
    # the shorthand's rule is named after its strategy
    message = str(
        errors_of(
            tmp_path,
            """\
            limits:
              execution: [{name: token_bucket, type: gcra}]
            """,
        )
    )
    assert "rule name 'token_bucket' is also an admission rule's" in message


def test_a_policy_with_named_rules_and_the_shorthand_names(tmp_path: Path) -> None:
    hub = hub_from(
        tmp_path,
        textwrap.dedent(
            """\
            limits:
              shadow: true
              admission:
                - {type: token_bucket}
                - {key: ip, type: fixed_window, points: 300}
                - {key: "header:X-Api-Key", type: gcra}
                - {key: constant, type: sliding_window, limit: 5000, period: 1}
            """
        ),
    )
    assert [(r.name, r.key_spec, r.shadow) for r in hub.rules] == [
        ("user", "user", True),
        ("ip", "ip", True),
        ("x-api-key", "header:X-Api-Key", True),
        ("global", "constant", True),
    ]

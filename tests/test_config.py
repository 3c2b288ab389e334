import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from bot.config import ConfigError, parse_config

CONTRACT_EXAMPLE = textwrap.dedent("""
    consul:
      addresses: [http://127.0.0.1:8500]
      prefix: upstreams
    slack:
      channel: C0DEPLOY
    apps:
      app:
        upstream: app
        nginx:
          status_url: http://127.0.0.1/upstream_status?format=json
          list_url: http://127.0.0.1/upstream_list
          upsync_interval: 500ms
        health:
          url: "http://{host}:{port}/ping"
          interval: 10s
          timeout: 3s
          window: 120s
          rise: 2
        release:
          executor: ssh
          drain_wait: 2s
          steps:
            stop: "systemctl stop app@{port}"
            deploy: "/opt/app/deploy.sh {version}"
            start: "systemctl start app@{port}"
        approvers: [U2BOB]
        approval: required
    ssh:
      user: deploy
      key: /etc/upstream-bot/id_ed25519
      known_hosts: /etc/upstream-bot/known_hosts
      port: 22
""")


def test_the_contracts_example_config_loads() -> None:
    config = parse_config(yaml.safe_load(CONTRACT_EXAMPLE), {})
    app = config.apps["app"]
    assert app.nginx.upsync_interval == 0.5
    assert (app.health.interval, app.health.window, app.health.rise) == (10.0, 120.0, 2)
    assert app.release.steps["deploy"].command == "/opt/app/deploy.sh {version}"
    assert app.release.steps["deploy"].timeout == 300.0
    assert app.approvers == ("U2BOB",) and app.approval == "required"
    assert config.slack.channel == "C0DEPLOY"


def test_consul_http_addr_wins_and_may_list_several() -> None:
    env = {"CONSUL_HTTP_ADDR": "127.0.0.1:8501,https://10.0.0.9:8501", "CONSUL_HTTP_TOKEN": "t0k"}
    config = parse_config(yaml.safe_load(CONTRACT_EXAMPLE), env)
    assert config.consul.addresses == ("http://127.0.0.1:8501", "https://10.0.0.9:8501")
    assert config.consul.token == "t0k"


def test_every_problem_is_reported_with_its_path() -> None:
    raw = yaml.safe_load(CONTRACT_EXAMPLE)
    raw["apps"]["app"]["helth"] = {}
    raw["apps"]["app"]["health"]["interval"] = "10x"
    raw["apps"]["app"]["approvers"] = ["bob"]
    raw["apps"]["app"]["release"]["executor"] = "telnet"
    with pytest.raises(ConfigError) as error:
        parse_config(raw, {})
    problems = "\n".join(error.value.problems)
    assert "apps.app.helth: unknown key" in problems
    assert "apps.app.health.interval: '10x' is not a duration" in problems
    assert "apps.app.approvers[0]: 'bob' is not a Slack user ID" in problems
    assert "apps.app.release.executor: expected one of ssh, agent, local" in problems


def test_a_session_ttl_consul_would_refuse_and_a_reserved_app_name_are_problems() -> None:
    raw = yaml.safe_load(CONTRACT_EXAMPLE)
    raw["consul"] = {"session_ttl": "5s"}
    raw["apps"]["watch"] = raw["apps"]["app"]
    with pytest.raises(ConfigError) as error:
        parse_config(raw, {})
    problems = "\n".join(error.value.problems)
    assert "consul.session_ttl: Consul takes a session TTL from 10s to 24h" in problems
    assert "apps.watch: `watch` is reserved" in problems
    raw = yaml.safe_load(CONTRACT_EXAMPLE)
    raw["consul"] = {"session_ttl": "30s"}
    assert parse_config(raw, {}).consul.session_ttl == 30.0


def test_check_config_notes_an_app_nobody_may_change() -> None:
    from bot.config import environment_problems, parse_config

    for raw in (
        {"apps": {"app": {}}},
        {"apps": {"app": {"operators": []}}, "access": {"operators": ["S0OPS"]}},
    ):
        _, notes = environment_problems(parse_config(raw, {}), {})
        assert any("apps.app: no operators" in n for n in notes), raw
    _, notes = environment_problems(parse_config({"apps": {"app": {}}, "access": {"operators": ["S0OPS"]}}, {}), {})
    assert not any("no operators" in n for n in notes)


@pytest.mark.parametrize(
    "address",
    [
        "http://consul:abc",
        "not an address",
        "http://127.0.0.1:99999",
        "http://:8500",
        "http://127.0.0.1:8500/v1",  # the client would drop the path without a word
        "http://127.0.0.1:8500?dc=eu",
    ],
)
def test_a_consul_address_that_cannot_be_used_is_a_problem_in_the_file_and_in_the_environment(address: str) -> None:
    raw = yaml.safe_load(CONTRACT_EXAMPLE)
    raw["consul"] = {"addresses": [address]}
    with pytest.raises(ConfigError) as error:
        parse_config(raw, {})
    assert any(p.startswith("consul.addresses[0]:") for p in error.value.problems), error.value.problems
    with pytest.raises(ConfigError) as error:
        parse_config(yaml.safe_load(CONTRACT_EXAMPLE), {"CONSUL_HTTP_ADDR": address})
    assert any(p.startswith("CONSUL_HTTP_ADDR (environment):") for p in error.value.problems), error.value.problems


def test_a_consul_address_with_credentials_is_refused_without_echoing_them() -> None:
    raw = yaml.safe_load(CONTRACT_EXAMPLE)
    raw["consul"] = {"addresses": ["http://ops:s3cret-pass@127.0.0.1:8500"]}
    with pytest.raises(ConfigError) as error:
        parse_config(raw, {})
    (problem,) = [p for p in error.value.problems if p.startswith("consul.addresses[0]:")]
    assert "CONSUL_HTTP_TOKEN" in problem and "s3cret-pass" not in problem
    assert "consul.token" not in problem  # there is no such key: the token comes from the environment only


# (where a URL with a password goes, a URL that is wrong for another reason too)
URLS_WITH_A_PASSWORD = [
    ("consul.addresses[0]", "http://ops:s3cret@127.0.0.1:85000"),
    ("consul.addresses[0]", "http://ops:s3cret@127.0.0.1:8500/v1"),
    ("apps.app.nginx.status_url", "http://ops:s3cret@127.0.0.1:0/status"),
    ("apps.app.nginx.list_url", "ftp://ops:s3cret@127.0.0.1/list"),
    ("apps.app.nginx.list_url", "http://ops:s3/cr?e#t@127.0.0.1:99999/list"),  # unescaped '/', '?', '#' in it
    ("apps.app.health.url", "http://ops:s3cret@{host}:{port}/{path}"),
]


@pytest.mark.parametrize(("key", "address"), URLS_WITH_A_PASSWORD)
def test_a_password_in_a_url_is_never_echoed(key: str, address: str) -> None:
    raw = yaml.safe_load(CONTRACT_EXAMPLE)
    where = {"consul.addresses[0]": raw["consul"], "apps.app.health.url": raw["apps"]["app"]["health"]}
    section, name = where.get(key, raw["apps"]["app"]["nginx"]), key.rsplit(".", 1)[1]
    section["addresses" if name == "addresses[0]" else name] = [address] if name == "addresses[0]" else address
    env = {"CONSUL_HTTP_ADDR": address} if key.startswith("consul") else {}
    with pytest.raises(ConfigError) as error:
        parse_config(raw, env)
    problems = error.value.problems
    assert any(p.startswith(f"{key}:") for p in problems), problems
    assert env == {} or any(p.startswith("CONSUL_HTTP_ADDR (environment):") for p in problems), problems
    assert all("s3" not in p and "ops" not in p for p in problems), problems
    assert all("***@" in p or "@" not in p for p in problems), problems


def test_a_url_is_shown_without_its_user_and_password() -> None:
    from commands.quoting import without_credentials

    assert without_credentials("http://ops:pw@h:1/x") == "http://***@h:1/x"
    assert without_credentials("http://ops:p/w?#@h:1") == "http://***@h:1"  # an unescaped password
    assert without_credentials("ops:pw@h:1") == "***@h:1"
    assert without_credentials("http://h:1/x") == "http://h:1/x"
    # Up to the last '@': a URL with an '@' in its path or query loses more of itself, never a password.
    assert without_credentials("http://h/x?mail=a@b") == "http://***@b"


def test_ipv6_and_bare_consul_addresses_are_taken_and_reach_the_agent() -> None:
    from bot.consul.store import _client

    raw = yaml.safe_load(CONTRACT_EXAMPLE)
    raw["consul"] = {"addresses": ["http://[::1]:8500", "127.0.0.1:8501/"]}
    config = parse_config(raw, {})
    assert config.consul.addresses == ("http://[::1]:8500", "http://127.0.0.1:8501")
    assert _client(config.consul.addresses[0], None, 1).http.base_uri == "http://[::1]:8500"


def test_a_health_url_with_an_unknown_placeholder_is_a_problem() -> None:
    raw = yaml.safe_load(CONTRACT_EXAMPLE)
    raw["apps"]["app"]["health"]["url"] = "http://{hostname}:{port}/ping"
    with pytest.raises(ConfigError) as error:
        parse_config(raw, {})
    assert any("apps.app.health.url:" in p and "{hostname}" in p for p in error.value.problems)


def run_status(tmp_path: object, config_text: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`upstream-bot run "/upstream status app"` with this config file and environment."""
    config = Path(str(tmp_path)) / "upstream-bot.yml"
    config.write_text(config_text)
    full = {k: v for k, v in os.environ.items() if k != "CONSUL_HTTP_ADDR"}
    full.update(env, UPSTREAM_BOT_CONFIG=str(config))
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", "run", "/upstream status app"],
        env=full,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_run_with_a_bad_consul_address_says_so_and_exits_2(tmp_path: object) -> None:
    done = run_status(tmp_path, "apps:\n  app: {}\n", {"CONSUL_HTTP_ADDR": "http://127.0.0.1:99999"})
    assert done.returncode == 2, done.stdout + done.stderr
    assert "CONSUL_HTTP_ADDR" in done.stdout + done.stderr and "Traceback" not in done.stderr


def test_run_with_a_consul_timeout_of_0_says_so_and_exits_2(tmp_path: object) -> None:
    done = run_status(tmp_path, "consul: {timeout: 0}\napps:\n  app: {}\n", {})
    assert done.returncode == 2, done.stdout + done.stderr
    assert "consul.timeout: must be more than 0" in done.stdout + done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("address", ["http://127.0.0.1:{port}", "http://{host}:8500"])
def test_only_the_health_url_takes_placeholders(address: str) -> None:
    raw = yaml.safe_load(CONTRACT_EXAMPLE)
    raw["consul"] = {"addresses": [address]}
    raw["apps"]["app"]["nginx"] = {"status_url": "http://{host}/status"}
    with pytest.raises(ConfigError) as error:
        parse_config(raw, {"CONSUL_HTTP_ADDR": address})
    problems = "\n".join(error.value.problems)
    assert "consul.addresses[0]:" in problems and "CONSUL_HTTP_ADDR (environment):" in problems
    assert "apps.app.nginx.status_url:" in problems and "only health.url has placeholders" in problems


def test_the_files_defaults_are_the_settings_defaults() -> None:
    from bot.config import Config
    from commands.settings import AppSettings

    expected = Config(apps={"app": AppSettings("app", "app")}, source="<string>")
    assert parse_config({"apps": {"app": None}}, {}) == expected
    assert parse_config(None, {}, source="x.yml") == Config(source="x.yml")


def test_a_null_key_takes_its_default_and_a_number_key_is_a_name() -> None:
    raw = {"consul": None, "ssh": {"port": None, "hosts": {"10.0.0.5": None}}, "apps": {2048: {"health": None}}}
    config = parse_config(raw, {})
    assert config.ssh.port == 22 and config.ssh_hosts["10.0.0.5"].port is None
    assert config.apps["2048"].upstream == "2048" and config.apps["2048"].health.interval == 10.0


def test_health_version_header_names_the_probes_response_header() -> None:
    raw = yaml.safe_load(CONTRACT_EXAMPLE)
    assert parse_config(raw, {}).apps["app"].health.version_header is None
    raw["apps"]["app"]["health"]["version_header"] = "X-App-Version"
    assert parse_config(raw, {}).apps["app"].health.version_header == "X-App-Version"


def test_steps_keep_their_form_and_timeouts() -> None:
    raw = yaml.safe_load(CONTRACT_EXAMPLE)
    release = raw["apps"]["app"]["release"]
    release["step_timeout"] = "1m"
    release["steps"]["deploy"] = {"run": "/opt/app/deploy.sh {version}", "timeout": "10m"}
    steps = parse_config(raw, {}).apps["app"].release.steps
    assert (steps["deploy"].timeout, steps["stop"].timeout) == (600.0, 60.0)
    release.update(executor="agent", steps=["stop", "start"])
    steps = parse_config(raw, {}).apps["app"].release.steps
    assert list(steps) == ["stop", "start"] and steps["stop"].command == ""


# (a change to CONTRACT_EXAMPLE's app, the problem check-config prints for it after "apps.app.")
APP_PROBLEMS = [
    ({"helth": {}}, "helth: unknown key (known here: upstream, operators, approvers, approval, networks,"),
    ({"health": "fast"}, "health: expected a mapping with keys url, interval, timeout, window, rise, source,"),
    ({"upstream": "a/b"}, "upstream: 'a/b' is not a folder name: letters, digits, '.', '_' or '-'"),
    ({"upstream": ".."}, "upstream: '..' is not a folder name: letters, digits, '.', '_' or '-' (not '.' or '..')"),
    ({"upstream": "."}, "upstream: '.' is not a folder name"),
    ({"upstream": "app prod"}, "upstream: 'app prod' is not a folder name"),
    ({"upstream": " "}, "upstream: expected a non-empty string, got ' '"),
    ({"approval": "yes"}, "approval: expected one of required, none, got 'yes'"),
    ({"approvers": [], "approval": "required"}, "approval: is 'required' but the app has no approvers"),
    ({"approvers": "U2BOB"}, "approvers: expected a list of Slack IDs, e.g. [U2BOB, S0OPS]"),
    ({"operators": ["alice"]}, "operators[0]: 'alice' is not a Slack user ID (U..., W...) or user-group ID"),
    ({"networks": ["10.0.0.0/8", "10.0.0.0/33"]}, "networks[1]: '10.0.0.0/33' is not an IPv4 network"),
    ({"networks": "10.0.0.0/8"}, "networks: expected a list of CIDRs, e.g. [10.0.0.0/8]"),
    ({"networks": ""}, "networks: expected a list of CIDRs, e.g. [10.0.0.0/8] (leave it out for any network)"),
    ({"networks": {}}, "networks: expected a list of CIDRs"),
    ({"networks": 0}, "networks: expected a list of CIDRs"),
    ({"nginx": {"status_url": "ftp://x"}}, "nginx.status_url: 'ftp://x' is not an http(s) URL"),
    ({"nginx": {"list_url": "http://x:0/"}}, "nginx.list_url: 'http://x:0/' has an invalid port"),
    ({"health": {"rise": 0}}, "health.rise: expected a whole number from 1 to 100, got 0"),
    ({"health": {"rise": "2"}}, "health.rise: expected a whole number from 1 to 100, got '2'"),
    ({"health": {"rise": True}}, "health.rise: expected a whole number from 1 to 100, got True"),
    ({"health": {"interval": 0}}, "health.interval: must be more than 0"),
    ({"health": {"interval": "5s", "timeout": "6s"}}, "health.timeout: is 6s, longer than health.interval (5s)"),
    ({"health": {"interval": "5s", "window": "1s"}}, "health.window: is 1s, shorter than health.interval (5s)"),
    # a rule holds for a key left at its default, too (timeout 3s, window 2m)
    ({"health": {"interval": "1s"}}, "health.timeout: is 3s, longer than health.interval (1s): probes would overlap"),
    ({"health": {"url": "http://{host}:{port}/ping", "interval": "5m"}}, "health.window: is 120s, shorter than"),
    ({"health": {"timeout": 0}}, "health.timeout: must be more than 0"),
    ({"health": {"timeout": float("nan")}}, "health.timeout: nan is not a duration"),
    ({"health": {"window": 0}}, "health.window: must be more than 0"),
    ({"health": {"interval": float("inf")}}, "health.interval: inf is not a duration"),
    ({"health": {"source": "x"}}, "health.source: expected one of probe, nginx, both, got 'x'"),
    ({"health": {"source": "probe"}}, "health.source: is probe, but health.url is not set"),
    ({"nginx": {}, "health": {"source": "nginx"}}, "health.source: is nginx, but nginx.status_url is not set"),
    ({"health": {"version_header": "X App"}}, "health.version_header: expected an HTTP header name such as"),
    ({"release": {"executor": "telnet"}}, "release.executor: expected one of ssh, agent, local, got 'telnet'"),
    ({"release": {"executor": "agent", "steps": {"stop": "x"}}}, "release.steps: with executor: agent, list"),
    ({"release": {"steps": ["stop"]}}, "release.steps: with executor: local, give each step its shell command"),
    ({"release": {"executor": "agent", "steps": ["stop", "Stop"]}}, "release.steps[1]: a step name is"),
    ({"release": {"steps": {"Stop": "x"}}}, "release.steps.Stop: a step name is lower-case letters"),
    ({"release": {"steps": {"stop": 5}}}, 'release.steps.stop: expected a shell command, or {run: "command"'),
    ({"release": {"steps": {"stop": {"timeout": "1s"}}}}, "release.steps.stop.run: missing: the shell command"),
    ({"release": {"steps": {"stop": {"run": "x", "tiemout": 1}}}}, "release.steps.stop.tiemout: unknown key"),
    ({"release": {"version_pattern": "(["}}, "release.version_pattern: not a regular expression:"),
    ({"release": {"step_timeout": 0}}, "release.step_timeout: must be more than 0"),
    ({"nginx": {"upsync_interval": -1}}, "nginx.upsync_interval: -1 is negative; a duration is 0 or more"),
    ({"release": {"steps": {"stop": {"run": "x", "timeout": "0s"}}}}, "release.steps.stop.timeout: must be more than"),
    ({"watch": {"reminder": 0}}, "watch.reminder: must be more than 0"),
    ({"watch": {"drained_reminder": "0ms"}}, "watch.drained_reminder: must be more than 0"),
    ({"watch": {"enabled": "yes"}}, "watch.enabled: expected true or false, got 'yes'"),
    ({"watch": {"reminder": "1d"}}, "watch.reminder: '1d' is not a duration (use e.g. 500ms, 10s, 2m, 1h)"),
    ({"watch": {"concurrency": 0}}, "watch.concurrency: expected a whole number from 1 to 1000, got 0"),
    ({"ssh": {"port": 70000}}, "ssh.port: expected a whole number from 1 to 65535, got 70000"),
]


@pytest.mark.parametrize(("change", "problem"), APP_PROBLEMS)
def test_an_apps_problem_says_where_and_what_would_be_right(change: dict[str, object], problem: str) -> None:
    raw = yaml.safe_load(CONTRACT_EXAMPLE)
    raw["apps"]["app"].update(change)
    with pytest.raises(ConfigError) as error:
        parse_config(raw, {})
    assert any(p.startswith(f"apps.app.{problem}") for p in error.value.problems), error.value.problems
    assert len(error.value.problems) == 1, error.value.problems


# (a top-level section, the problem check-config prints for it)
SECTION_PROBLEMS = [
    ({"consul": "x"}, "consul: expected a mapping with keys addresses, prefix, timeout, session_ttl"),
    ({"consul": {"addresses": []}}, "consul.addresses: expected a list of addresses, e.g. [http://127.0.0.1:8500]"),
    ({"consul": {"addresses": [8500]}}, "consul.addresses[0]: expected an address such as http://127.0.0.1:8500"),
    ({"consul": {"timeout": -1}}, "consul.timeout: must be more than 0, got -1"),
    ({"consul": {"timeout": 0}}, "consul.timeout: must be more than 0"),
    ({"consul": {"timeout": float("inf")}}, "consul.timeout: inf is not a duration"),
    ({"consul": {"timeout": float("nan")}}, "consul.timeout: nan is not a duration"),
    ({"consul": {"timeout": "9" * 400}}, "consul.timeout: '999"),
    ({"ssh": {"connect_timeout": 0}}, "ssh.connect_timeout: must be more than 0"),
    ({"agent": {"connect_timeout": "0s"}}, "agent.connect_timeout: must be more than 0"),
    ({"consul": {"prefix": ".."}}, "consul.prefix: '..' is not a KV folder: names of letters, digits, '.', '_' or '-'"),
    ({"consul": {"prefix": "upstreams/../x"}}, "consul.prefix: 'upstreams/../x' is not a KV folder"),
    ({"consul": {"prefix": "./upstreams"}}, "consul.prefix: './upstreams' is not a KV folder"),
    ({"consul": {"prefix": "nginx//upstreams"}}, "consul.prefix: 'nginx//upstreams' is not a KV folder"),
    ({"consul": {"prefix": "/"}}, "consul.prefix: '/' is not a KV folder"),
    ({"consul": {"prefix": "my upstreams"}}, "consul.prefix: 'my upstreams' is not a KV folder"),
    ({"slack": {"channels": []}}, "slack.channels: expected a list of Slack channel IDs such as [C0DEPLOY]"),
    ({"slack": {"channels": ["C0OK", "general"]}}, "slack.channels[1]: 'general' is not a Slack channel ID"),
    ({"history": {"keep": 5}}, "history.keep: expected a whole number from 10 to 1000000, got 5"),
    ({"ssh": {"port": "22"}}, "ssh.port: expected a whole number from 1 to 65535, got '22'"),
    ({"ssh": {"hosts": ["10.0.0.5"]}}, "ssh.hosts: expected a mapping of node address to its ssh settings"),
    ({"ssh": {"hosts": {"10.0.0.5": {"usr": "app"}}}}, "ssh.hosts.10.0.0.5.usr: unknown key (known here: user, port"),
    ({"agent": {"scheme": "ftp"}}, "agent.scheme: expected one of http, https, got 'ftp'"),
    ({"apps": ["app"]}, "apps: expected a mapping of app name to its settings"),
    ({"apps": 0}, "apps: expected a mapping of app name to its settings"),
    ({"apps": {"my app": {}}}, "apps.my app: an app name is letters, digits, '.', '_' or '-'"),
]


@pytest.mark.parametrize(("change", "problem"), SECTION_PROBLEMS)
def test_a_sections_problem_says_where_and_what_would_be_right(change: dict[str, object], problem: str) -> None:
    raw = yaml.safe_load(CONTRACT_EXAMPLE)
    raw.update(change)
    with pytest.raises(ConfigError) as error:
        parse_config(raw, {})
    assert any(p.startswith(problem) for p in error.value.problems), error.value.problems
    assert len(error.value.problems) == 1, error.value.problems


def test_a_file_that_is_not_a_mapping_is_named() -> None:
    with pytest.raises(ConfigError) as error:
        parse_config(["apps"], {}, source="x.yml")
    keys = "consul, slack, access, history, ssh, agent, apps"
    assert error.value.problems == [f"x.yml: expected a mapping with keys {keys}"]


def test_a_rule_is_reported_beside_the_other_problems_of_its_section() -> None:
    raw = yaml.safe_load(CONTRACT_EXAMPLE)
    app = raw["apps"]["app"]
    app["nginx"] = {}
    app["health"].update(source="nginx", interval="10x", rise=0)
    app["approvers"], app["watch"] = [], {"enabled": 1}
    with pytest.raises(ConfigError) as error:
        parse_config(raw, {})
    assert [p.split(":")[0] for p in error.value.problems] == [
        "apps.app.approval",
        "apps.app.health.interval",
        "apps.app.health.rise",
        "apps.app.health.source",
        "apps.app.watch.enabled",
    ]


def test_the_schemas_duration_pattern_is_the_one_durations_are_read_with() -> None:
    """An editor (the schema's pattern) and check-config (parse_duration) take the same strings."""
    import re

    from bot.config import config_schema
    from bot.durations import parse_duration

    drain_wait = config_schema()["definitions"]["Release"]["properties"]["drain_wait"]
    (pattern,) = [s["pattern"] for s in drain_wait["anyOf"] if s.get("type") == "string"]
    for text in ("500ms", "10s", " 2 m ", "1.5h", "0", "7", "-1s", "1d", "abc", "1.5.2s", "10 S", "s", ""):
        try:
            parse_duration(text)
            taken = True
        except ValueError:
            taken = False
        assert bool(re.search(pattern, text)) == taken, text


def test_every_key_in_the_schema_has_a_description() -> None:
    from bot.config import config_schema

    schema = config_schema()
    for name, section in [("top", schema), *schema["definitions"].items()]:
        assert section.get("description"), name
        for key, spec in section["properties"].items():
            assert spec.get("description"), f"{name}.{key}"  # a section's, too: beside its $ref, inside anyOf


def test_a_rule_on_a_key_left_at_its_default_is_reported_beside_the_other_problems() -> None:
    raw = yaml.safe_load(CONTRACT_EXAMPLE)
    raw["apps"]["app"]["health"] = {"interval": "1s", "rise": 0, "source": "x"}
    with pytest.raises(ConfigError) as error:
        parse_config(raw, {})
    assert [p.split(":")[0] for p in error.value.problems] == [
        "apps.app.health.timeout",
        "apps.app.health.rise",
        "apps.app.health.source",
    ]


def test_the_defaults_themselves_keep_the_rules() -> None:
    health = parse_config({"apps": {"app": {"health": {"interval": "3s"}}}}, {}).apps["app"].health
    assert (health.interval, health.timeout, health.window) == (3.0, 3.0, 120.0)
    health = parse_config({"apps": {"app": {"health": {"interval": "2m"}}}}, {}).apps["app"].health
    assert health.window == 120.0


def test_a_duration_is_finite() -> None:
    from bot.durations import parse_duration

    for value in (float("inf"), float("-inf"), float("nan"), "9" * 400):
        with pytest.raises(ValueError, match="is not a duration"):
            parse_duration(value)
    assert parse_duration(0) == 0.0 and parse_duration("1.5m") == 90.0
    # Finite but absurd: `serve` crashed at start (APScheduler's timer overflowed on interval: 1e11h).
    raw = yaml.safe_load(CONTRACT_EXAMPLE)
    raw["apps"]["app"]["health"].update(interval="100000000000h", window="100000000000h")
    with pytest.raises(ConfigError) as error:
        parse_config(raw, {})
    assert any("apps.app.health.interval:" in p and "longer than a year" in p for p in error.value.problems)
    assert parse_duration("8784h") == 366 * 86400  # a year is still taken


def test_0_is_taken_where_it_means_no_wait() -> None:
    raw = yaml.safe_load(CONTRACT_EXAMPLE)
    raw["apps"]["app"]["release"]["drain_wait"] = 0
    raw["apps"]["app"]["nginx"]["upsync_interval"] = "0s"
    app = parse_config(raw, {}).apps["app"]
    assert (app.release.drain_wait, app.nginx.upsync_interval) == (0.0, 0.0)


@pytest.mark.parametrize(
    ("prefix", "read"), [("upstreams/prod", "upstreams/prod"), ("/upstreams/", "upstreams"), ("nginx.v2_a-b", None)]
)
def test_a_prefix_is_a_kv_folder_path(prefix: str, read: str | None) -> None:
    raw = yaml.safe_load(CONTRACT_EXAMPLE)
    raw["consul"]["prefix"] = prefix
    assert parse_config(raw, {}).consul.prefix == (read or prefix)


@pytest.mark.parametrize("upstream", ["app-prod", "app.v2", "_app", "..app", "a.."])
def test_an_upstream_is_a_folder_name(upstream: str) -> None:
    raw = yaml.safe_load(CONTRACT_EXAMPLE)
    raw["apps"]["app"]["upstream"] = upstream
    assert parse_config(raw, {}).apps["app"].upstream == upstream


@pytest.mark.parametrize("apps", [None, {}, [], ""])
def test_a_file_without_apps_loads_and_check_config_says_so(apps: object) -> None:
    from bot.config import environment_problems

    config = parse_config({"apps": apps}, {})
    assert config.apps == {}
    _, notes = environment_problems(config, {})
    assert any(n.startswith("apps: none") for n in notes), notes
    _, notes = environment_problems(parse_config({"apps": {"app": {}}}, {}), {})
    assert not any(n.startswith("apps: none") for n in notes), notes


def test_a_durations_schema_says_what_it_takes() -> None:
    import re

    from bot.config import config_schema
    from bot.durations import parse_duration

    definitions = config_schema()["definitions"]

    def branches(key: str) -> tuple[dict, dict]:
        section, name = key.split(".")
        spec = definitions[section]["properties"][name]
        found = [b for alt in spec["anyOf"] for b in alt.get("anyOf", [alt])]
        return next(b for b in found if b.get("type") == "string"), next(b for b in found if b.get("type") == "number")

    positive = ["Consul.timeout", "Ssh.connect_timeout", "Agent.connect_timeout", "Health.interval", "Health.timeout"]
    positive += ["Health.window", "Release.step_timeout", "Step.timeout", "Watch.reminder", "Watch.drained_reminder"]
    for key in positive:
        text, number = branches(key)
        assert number.get("exclusiveMinimum") == 0 and "minimum" not in number, key
        for sample in ("0", "0s", " 0.00 ms", "00h", "1", "0.5s", "10ms", "0.01h", "100"):
            assert bool(re.search(text["pattern"], sample)) == (parse_duration(sample) > 0), (key, sample)
    for key in ("Nginx.upsync_interval", "Release.drain_wait"):
        text, number = branches(key)
        assert number.get("minimum") == 0 and re.search(text["pattern"], "0s"), key
    text, number = branches("Consul.session_ttl")
    assert (number["minimum"], number["maximum"]) == (10, 86400)


def test_a_yaml_mistake_is_placed_without_quoting_the_line(tmp_path: Path) -> None:
    """PyYAML quotes the broken line; that line may hold a password (a URL's), so only where it is is said."""
    from bot.config import load_config

    config = tmp_path / "upstream-bot.yml"
    config.write_text('consul:\n  addresses: ["http://u:s3cret@127.0.0.1:8500" x\napps: {}\n')
    with pytest.raises(ConfigError) as error:
        load_config(str(config), {})
    (problem,) = error.value.problems
    assert "not valid YAML" in problem and "line 2, column 48" in problem and "s3cret" not in problem


def test_braces_in_a_password_are_not_taken_for_placeholders() -> None:
    raw = {"apps": {"app": {"nginx": {"status_url": "http://u:x{s3cret}y@127.0.0.1:8080/status"}}}}
    assert parse_config(raw, {}).apps["app"].nginx.status_url == "http://u:x{s3cret}y@127.0.0.1:8080/status"
    raw["apps"]["app"]["nginx"]["status_url"] = "http://u:x{s3cret}y@127.0.0.1:8080/{hostname}"
    with pytest.raises(ConfigError) as error:
        parse_config(raw, {})
    assert "{hostname}" in str(error.value) and "s3cret" not in str(error.value)

import textwrap

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


@pytest.mark.parametrize("address", ["http://consul:abc", "not an address", "http://127.0.0.1:99999", "http://:8500"])
def test_a_consul_address_that_cannot_be_used_is_a_problem_in_the_file_and_in_the_environment(address: str) -> None:
    raw = yaml.safe_load(CONTRACT_EXAMPLE)
    raw["consul"] = {"addresses": [address]}
    with pytest.raises(ConfigError) as error:
        parse_config(raw, {})
    assert any(p.startswith("consul.addresses[0]:") for p in error.value.problems), error.value.problems
    with pytest.raises(ConfigError) as error:
        parse_config(yaml.safe_load(CONTRACT_EXAMPLE), {"CONSUL_HTTP_ADDR": address})
    assert any(p.startswith("CONSUL_HTTP_ADDR (environment):") for p in error.value.problems), error.value.problems


def test_a_health_url_with_an_unknown_placeholder_is_a_problem() -> None:
    raw = yaml.safe_load(CONTRACT_EXAMPLE)
    raw["apps"]["app"]["health"]["url"] = "http://{hostname}:{port}/ping"
    with pytest.raises(ConfigError) as error:
        parse_config(raw, {})
    assert any("apps.app.health.url:" in p and "{hostname}" in p for p in error.value.problems)


def test_run_with_a_bad_consul_address_says_so_and_exits_2(tmp_path: object) -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    config = Path(str(tmp_path)) / "upstream-bot.yml"
    config.write_text("apps:\n  app: {}\n")
    env = {**os.environ, "UPSTREAM_BOT_CONFIG": str(config), "CONSUL_HTTP_ADDR": "http://127.0.0.1:99999"}
    done = subprocess.run(
        [sys.executable, "-m", "bot.cli", "run", "/upstream status app"], env=env, capture_output=True, text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "CONSUL_HTTP_ADDR" in done.stdout + done.stderr and "Traceback" not in done.stderr


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

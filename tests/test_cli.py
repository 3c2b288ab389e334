"""`upstream-bot run`, `check-config` and `demo` as a user runs them: real processes, real exit codes."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bot.processes import free_port, port_free
from bot.terminal.frontend import TerminalFrontEnd
from commands.addresses import ServerAddress
from commands.events import DECISION_OPTIONS, DecisionNeeded
from commands.release_plan import ReleasePlan
from commands.release_state import ReleaseState
from tests.conftest import Consul

BIN = [sys.executable, "-m", "bot.cli"]


def upstream_bot(
    *args: str, config: Path | None = None, env: dict[str, str] | None = None, stdin: str = "", timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    if config is not None:
        full_env["UPSTREAM_BOT_CONFIG"] = str(config)
    return subprocess.run([*BIN, *args], input=stdin, capture_output=True, text=True, env=full_env, timeout=timeout)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "upstream-bot.yml"
    path.write_text("apps:\n  app:\n    health:\n      url: http://{host}:{port}/ping\n      timeout: 2s\n")
    return path


def test_run_drains_with_yes_and_exits_zero(consul: Consul, config: Path, services: list[int]) -> None:
    a, b = (f"127.0.0.1:{p}" for p in services[:2])
    consul.add_server("app", a)
    consul.add_server("app", b)
    result = upstream_bot("run", f"/drain {a}", "--yes", config=config, env={"CONSUL_HTTP_ADDR": consul.url})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "app: 1 of 2 now serving" in result.stdout
    assert json.loads(consul.value(f"upstreams/app/{a}") or "")["down"] == 1


def test_run_without_yes_and_no_terminal_changes_nothing(consul: Consul, config: Path, services: list[int]) -> None:
    a, b = (f"127.0.0.1:{p}" for p in services[:2])
    consul.add_server("app", a)
    consul.add_server("app", b)
    result = upstream_bot("run", f"/drain {a}", config=config, env={"CONSUL_HTTP_ADDR": consul.url})
    assert result.returncode == 1 and "pass --yes" in result.stdout
    assert json.loads(consul.value(f"upstreams/app/{a}") or "")["down"] == 0


def test_run_refusals_and_errors_exit_non_zero(consul: Consul, config: Path, services: list[int]) -> None:
    only = f"127.0.0.1:{services[0]}"
    consul.add_server("app", only)
    refused = upstream_bot("run", f"/drain {only}", "--yes", config=config, env={"CONSUL_HTTP_ADDR": consul.url})
    assert refused.returncode == 1 and "no serving server" in refused.stdout
    bad = upstream_bot("run", "/drain nonsense", config=config, env={"CONSUL_HTTP_ADDR": consul.url})
    assert bad.returncode == 1 and "not a server address" in bad.stdout
    dead = f"http://127.0.0.1:{free_port()}"
    down = upstream_bot("run", "/upstream status app", config=config, env={"CONSUL_HTTP_ADDR": dead})
    assert down.returncode == 3 and f"{dead}: connection refused" in down.stdout


def test_check_config_reports_every_problem_with_its_path(tmp_path: Path) -> None:
    path = tmp_path / "bad.yml"
    path.write_text(
        "consul:\n  adresses: [x]\napps:\n  app:\n    health:\n      window: 2 minutes\n"
        "    release:\n      executor: ssh\n"
    )
    result = upstream_bot("check-config", "--config", str(path))
    assert result.returncode == 2
    assert "consul.adresses: unknown key" in result.stderr
    assert "apps.app.health.window: '2 minutes' is not a duration" in result.stderr
    good = tmp_path / "good.yml"
    good.write_text("apps:\n  app:\n    release:\n      executor: ssh\nssh:\n  key: /nonexistent/key\n")
    result = upstream_bot("check-config", "--config", str(good))
    assert result.returncode == 2 and "ssh.key: /nonexistent/key is not a readable file" in result.stdout


def test_config_schema_prints_the_published_schema() -> None:
    result = upstream_bot("config-schema")
    assert result.returncode == 0, result.stderr
    published = Path(__file__).parent.parent / "docs" / "upstream-bot.schema.json"
    # Regenerate after changing bot/config_models.py: upstream-bot config-schema > docs/upstream-bot.schema.json
    assert result.stdout == published.read_text(), "docs/upstream-bot.schema.json is stale"
    schema = json.loads(result.stdout)
    assert schema["additionalProperties"] is False and "apps" in schema["properties"]
    health = schema["definitions"]["Health"]["properties"]
    assert "X-App-Version" in health["version_header"]["description"]


def test_demo_takes_the_same_commands_at_its_prompt() -> None:
    base = next(p for p in range(19001, 19900, 10) if all(port_free(p + i) for i in range(4)))
    script = (
        f"/upstream status app\n/drain 127.0.0.1:{base}\ny\n/upstream status app\n"
        f"/undrain 127.0.0.1:{base}\ny\n/upstream status app\n"  # /undrain asks first too
        f"help\n/upstream add app 127.0.0.1:{base + 3}\ny\n/upstream status app\nexit\n"  # the spare service
    )
    result = upstream_bot("demo", "--base-port", str(base), stdin=script)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.count("app: 3 of 3 serving") == 2 and "app: 2 of 3 serving" in out
    assert re.search(rf"127\.0\.0\.1:{base}\s+DRAINED", out)
    assert "probe: ok (200 OK)  version: 1" in out  # what each sample service says it runs
    assert f"not in the upstream yet, answers at 127.0.0.1:{base + 3}" in out  # said in the banner
    assert "/release <app>" in out and "is not a command" not in out  # help is a command
    assert "app: 4 of 4 serving" in out


def release_config(tmp_path: Path, deploy: str = "true", extra: str = "") -> Path:
    path = tmp_path / "release.yml"
    path.write_text(
        "apps:\n  app:\n    health:\n      url: http://{host}:{port}/ping\n      interval: 300ms\n"
        "      timeout: 300ms\n      window: 5s\n    nginx:\n      upsync_interval: 100ms\n"
        f'    release:\n      drain_wait: 100ms\n      steps:\n        stop: "true"\n        deploy: "{deploy}"\n'
        f'        start: "true"\n{extra}'
    )
    return path


def test_run_release_exits_zero_only_when_every_node_was_released(
    consul: Consul, tmp_path: Path, services: list[int]
) -> None:
    for port in services[:2]:
        consul.add_server("app", f"127.0.0.1:{port}")
    env = {"CONSUL_HTTP_ADDR": consul.url}
    ok = upstream_bot("run", "/release app --serial --version 2", "--yes", config=release_config(tmp_path), env=env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "succeeded: all 2 node(s) released" in ok.stdout and "deploy ok" in ok.stdout
    said = [line for line in ok.stdout.splitlines() if not line.startswith("{")]  # not the history's JSON lines
    assert sum("succeeded: all 2 node(s) released" in line for line in said) == 1  # the end is said once
    bad = upstream_bot(
        "run",
        "/release app --version 2",
        "--yes",
        env=env,
        config=release_config(tmp_path, deploy="echo disk full >&2; exit 3"),
    )
    assert bad.returncode == 3 and "exit status 3" in bad.stdout and "disk full" in bad.stdout
    first = min(services[:2])
    assert json.loads(consul.value(f"upstreams/app/127.0.0.1:{first}") or "")["down"] == 1  # left drained


def test_run_release_of_an_app_needing_approval_is_refused(consul: Consul, tmp_path: Path, services: list[int]) -> None:
    for port in services[:2]:
        consul.add_server("app", f"127.0.0.1:{port}")
    config = release_config(tmp_path, extra="    approvers: [U2BOB]\n    approval: required\n")
    result = upstream_bot(
        "run", "/release app --version 2", "--yes", config=config, env={"CONSUL_HTTP_ADDR": consul.url}
    )
    assert result.returncode == 1 and "approval" in result.stdout and "Slack" in result.stdout
    assert all(json.loads(consul.value(f"upstreams/app/127.0.0.1:{p}") or "")["down"] == 0 for p in services[:2])


def test_serve_refuses_to_start_without_a_usable_token(tmp_path: Path, consul: Consul) -> None:
    from bot.standins.server_thread import ServerThread
    from bot.standins.slack import SlackStandIn

    config = tmp_path / "upstream-bot.yml"
    config.write_text("apps:\n  app: {}\n")
    missing = upstream_bot(
        "serve",
        "--http",
        "--port",
        str(free_port()),
        config=config,
        env={"SLACK_BOT_TOKEN": "", "SLACK_SIGNING_SECRET": "s"},
    )
    assert missing.returncode == 2 and "SLACK_BOT_TOKEN is not set" in missing.stderr
    no_secret = upstream_bot(
        "serve",
        "--http",
        "--port",
        str(free_port()),
        config=config,
        env={"SLACK_BOT_TOKEN": "xoxb-1", "SLACK_SIGNING_SECRET": ""},
    )
    assert no_secret.returncode == 2 and "SLACK_SIGNING_SECRET" in no_secret.stderr
    slack = SlackStandIn(tokens=("xoxb-right",))
    server = ServerThread(slack.app()).start()
    try:
        refused = upstream_bot(
            "serve",
            "--http",
            "--port",
            str(free_port()),
            config=config,
            timeout=30,
            env={
                "SLACK_BOT_TOKEN": "xoxb-wrong",
                "SLACK_SIGNING_SECRET": "s",
                "SLACK_API_URL": f"{server.url}/api/",
                "CONSUL_HTTP_ADDR": consul.url,
            },
        )
    finally:
        server.stop()
    assert refused.returncode == 2 and "invalid_auth" in refused.stderr


# -- the terminal's decisions (in process: the engine's questions, answered at the prompt) ----------------


class DecisionRecorder:
    """Stands in for the service: records what the terminal decided."""

    releases = None

    def __init__(self) -> None:
        self.decided: list[str] = []

    async def decide(self, app: str, decision_id: str, decision: str, by: str, notifier: object) -> None:
        self.decided.append(decision)


def decision(kind: str) -> DecisionNeeded:
    node = ServerAddress("127.0.0.1", 9001)
    plan = ReleasePlan("app", "local:test", "2", "serial", ((node,),), ("stop", "deploy", "start"))
    return DecisionNeeded(ReleaseState.new(plan, 0.0), kind, "d1", node, "health window failed")


@pytest.mark.parametrize(
    ("kind", "answers", "chosen"),
    [
        ("restore_failed", ["restore_unhealthy", "yes"], "restore_unhealthy"),
        ("restore_failed", ["restore_unhealthy", "y"], "leave"),  # only the word "yes" confirms it
        ("restore_failed", ["restore", "retry"], "retry"),  # not an option here: asked again
        ("restore_failed", [""], "leave"),
        ("failure", ["restore"], "restore"),
        ("failure", [None], "leave"),  # end of input
        ("canary", ["y"], "continue"),
        ("canary", [""], "abort"),
    ],
)
async def test_terminal_offers_the_events_options_and_confirms_dangerous_ones_twice(
    kind: str, answers: list[str | None], chosen: str
) -> None:
    asked: list[str] = []

    async def ask(prompt: str) -> str | None:
        asked.append(prompt)
        return answers[len(asked) - 1]

    service, out = DecisionRecorder(), io.StringIO()
    front = TerminalFrontEnd(service, ask=ask, out=out)  # type: ignore[arg-type]
    await front.emit(decision(kind))
    assert service.decided == [chosen]
    assert len(asked) == len(answers)
    assert all(option in asked[0] for option in DECISION_OPTIONS[kind])
    shown = out.getvalue()
    assert all(re.search(rf"^\s+{option}\s", shown, re.M) for option in DECISION_OPTIONS[kind])
    if kind == "restore_failed":
        assert "DANGEROUS" in shown and "could not be restored" in shown
    if answers[0] == "restore_unhealthy":
        assert asked[1].startswith('Type "yes"')


@pytest.mark.parametrize(
    ("kind", "chosen"), [("restore_failed", "leave"), ("failure", "leave"), ("canary", "continue")]
)
async def test_with_yes_a_failure_is_left_drained_and_nothing_dangerous_is_chosen(kind: str, chosen: str) -> None:
    async def ask(prompt: str) -> str | None:
        raise AssertionError(f"--yes asked {prompt!r}")

    service = DecisionRecorder()
    front = TerminalFrontEnd(service, ask=ask, out=io.StringIO(), assume_yes=True)  # type: ignore[arg-type]
    await front.emit(decision(kind))
    assert service.decided == [chosen]


def test_demo_refuses_a_config_it_would_not_use() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bot.cli", "demo", "--config", "mine.yml"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and "embedded config" in done.stderr, done.stderr


def test_the_terminal_shows_no_slack_mention_syntax() -> None:
    from bot.terminal.render import event_lines
    from commands.events import Problem

    (line,) = event_lines(Problem("a release of app is running: started by <@local:root>; ask <!subteam^S0OPS>"))
    assert line == "error: a release of app is running: started by @local:root; ask @S0OPS"


def test_demo_refuses_a_base_port_its_services_would_not_fit_after() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bot.cli", "demo", "--base-port", "65533"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and "65533..65536" in done.stdout and "Traceback" not in done.stderr, done.stderr


def test_a_decision_answered_at_the_terminal_is_in_the_history(
    consul: Consul, tmp_path: Path, services: list[int]
) -> None:
    """The answer to "node failed: leave, retry, ...?" is audited like a Slack press (its write used to be
    cancelled as soon as the release took the answer)."""
    for port in services[:2]:
        consul.add_server("app", f"127.0.0.1:{port}")
    config = release_config(tmp_path, deploy="echo disk full >&2; exit 3")
    env = {"CONSUL_HTTP_ADDR": consul.url}
    result = upstream_bot("run", "/release app --version 2", config=config, env=env, stdin="y\nleave\n")
    assert result.returncode == 3 and "leave" in result.stdout, result.stdout + result.stderr
    history = upstream_bot("run", "/upstream history app", config=config, env=env)
    assert "release.decision" in history.stdout and "leave" in history.stdout, history.stdout

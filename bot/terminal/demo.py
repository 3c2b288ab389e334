"""`upstream-bot demo`: a local sandbox with a terminal chat, no Slack and no external services.

An in-memory Consul stand-in on loopback, three sample services registered under `upstreams/app/`
exactly as nginx-upsync-module expects, and a prompt that takes the same commands as Slack.
"""

from __future__ import annotations

import shlex
import shutil
import sys
import tempfile
from pathlib import Path

from bot.cli import EXIT_INTERRUPTED
from bot.config import Config, ConsulConfig
from bot.health.scheduler import HealthWatcher
from bot.processes import port_free, start_sample_service, stop_sample_service
from bot.runtime import service_for
from bot.standins.consul import ConsulStandIn
from bot.standins.server_thread import ServerThread
from bot.terminal.frontend import PROMPT_FORM, TerminalFrontEnd
from bot.terminal.prompt import on_terminal
from commands.servers import DEFAULTS, encode
from commands.service import CommandService
from commands.settings import AppSettings, HealthSettings, NginxSettings, ReleaseSettings, StepSpec

BANNER = """upstream-bot demo: Consul stand-in at {consul}, app served by {servers};
a spare sample service, not in the upstream yet, answers at {spare}.
Try:  /upstream status app   /drain {first}   /undrain {first}   /upstream add app {spare}
      /release app --version 2   /release app --dry-run   /upstream alerts   help, exit"""


def demo_steps(state: Path) -> dict[str, StepSpec]:
    """The demo's release steps really stop, deploy and start its sample service processes."""
    base = f"{shlex.quote(sys.executable)} -m bot.sample_service"
    where = f"--state-dir {shlex.quote(str(state))}"
    return {
        "stop": StepSpec(f"{base} stop --port {{port}} {where}", 30.0),
        "deploy": StepSpec(f"{base} deploy --port {{port}} --version {{version}} {where}", 30.0),
        "start": StepSpec(f"{base} start --host {{host}} --port {{port}} {where}", 30.0),
    }


def demo_config(consul_url: str, ports: list[int], state: Path) -> Config:
    app = AppSettings(
        name="app",
        upstream="app",
        nginx=NginxSettings(upsync_interval=0.5),
        health=HealthSettings(
            url="http://{host}:{port}/ping",
            interval=2.0,
            timeout=2.0,
            window=30.0,
            rise=2,
            version_header="X-App-Version",  # the sample services name their deployed version in it
        ),
        release=ReleaseSettings(executor="local", drain_wait=1.0, steps=demo_steps(state)),
    )
    return Config(consul=ConsulConfig(addresses=(consul_url,)), apps={"app": app}, source="<demo>")


def front_end(service: CommandService, assume_yes: bool) -> TerminalFrontEnd:
    """On a terminal, the interactive prompt (line editing, releases in the background); from a pipe, the
    line reader, one command at a time (scripted demos and the tests rely on that order)."""
    # What a release leaves drained is put back at this prompt, not with `upstream-bot run`: the demo's
    # Consul lives in this process.
    if not on_terminal():
        return TerminalFrontEnd(service, user="local:demo", assume_yes=assume_yes, put_back_form=PROMPT_FORM)
    from bot.terminal.interactive import InteractiveFrontEnd
    from bot.terminal.prompt import PromptReader

    return InteractiveFrontEnd(
        service, PromptReader(), user="local:demo", assume_yes=assume_yes, put_back_form=PROMPT_FORM
    )


async def run_demo(base_port: int = 9001, count: int = 3, assume_yes: bool = False) -> int:
    if not 1024 <= base_port <= 65535 - count:
        print(f"error: --base-port {base_port}: the demo needs ports {base_port}..{base_port + count} (1024..65535).")
        return 2
    ports = list(range(base_port, base_port + count))
    spare = base_port + count  # running, not registered: something to try `/upstream add` on
    services = [*ports, spare]
    busy = [p for p in services if not port_free(p)]
    if busy:
        print(
            f"error: port(s) {', '.join(map(str, busy))} on 127.0.0.1 are in use; stop what uses them "
            f"or pass --base-port N."
        )
        return 2
    standin = ConsulStandIn()
    for port in ports:
        standin.put_value(f"upstreams/app/127.0.0.1:{port}", encode(dict(DEFAULTS)))
    server = ServerThread(standin.app()).start()
    state = Path(tempfile.mkdtemp(prefix="upstream-bot-demo-"))
    try:
        for port in services:
            start_sample_service(port, state_dir=state)
        config = demo_config(server.url, ports, state)
        async with service_for(config, echo=None) as service:
            front = front_end(service, assume_yes)
            if isinstance(service.watches, HealthWatcher):
                service.watches.start(front)
            finished = await front.repl(
                BANNER.format(
                    consul=server.url,
                    servers=", ".join(f"127.0.0.1:{p}" for p in ports),
                    first=f"127.0.0.1:{ports[0]}",
                    spare=f"127.0.0.1:{spare}",
                )
            )
        return 0 if finished else EXIT_INTERRUPTED  # left with a second Ctrl-C during a command
    finally:
        for port in services:
            stop_sample_service(port, state)
        server.stop()
        shutil.rmtree(state, ignore_errors=True)

"""The agent's HTTP server (TLS unless `insecure: true`).

- `GET /healthz` (unsigned): liveness.
- `GET /v1/steps` (signed): the steps this agent runs, for the bot's preflight. Its signed target names
  the app node the release is about, so a preflight to the wrong agent fails before anything runs.
- `POST /v1/steps/<step>/run` (signed), body `{"app", "host", "port", "version"}`: runs the step from
  the agent's own config with those values validated and shell-quoted, and streams NDJSON lines:
  `{"stream": "stdout", "line": "..."}` ..., then `{"done": true, "exit_status": 0, "duration": 1.2,
  "error": null}`. A second run of a step already running answers 409. If the bot goes away mid-step
  (abort, crash), the step's processes are killed.

Refusals: 401 (unsigned, bad signature, stale, replayed, signed before a start without nonce state),
403 (the signed target is a node this agent does not serve), 400 (the body or path disagrees with the
signed target), 503 (the nonce could not be recorded on disk).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import ssl
import sys
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from bot.agent.config import AgentSettings
from bot.agent.signing import NonceStore, Refused, ReplayGuard, SignedTarget, StateError
from bot.executors.process import run_process, step_environment
from commands.steps import OutputLine, StepRefused, StepTarget, render_command, validate_target

log = logging.getLogger(__name__)
EXIT_CONFIG = 2  # as `upstream-bot` reports a config problem
_TARGET = web.RequestKey("target", SignedTarget)  # set by _verify for the handlers


class Agent:
    def __init__(self, settings: AgentSettings, guard: ReplayGuard) -> None:
        self.settings = settings
        self.guard = guard
        self.running: dict[str, float] = {}

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._verify])
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/v1/steps", self._steps)
        app.router.add_post("/v1/steps/{step}/run", self._run)
        return app

    def _served(self, target: SignedTarget) -> None:
        if not self.settings.serves(target.host, target.port):
            served = ", ".join(str(n) for n in self.settings.nodes)
            raise Refused(
                403,
                f"this agent does not serve node {target.node} (it serves {served}); "
                "was the request sent to another node's agent?",
            )

    @web.middleware
    async def _verify(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path == "/healthz":
            return await handler(request)
        body = await request.read()
        try:
            target = self.guard.verify(request.method, request.path_qs, request.headers, body)
            # Before the nonce is recorded: a request for another node never touches the state file.
            self._served(target)
            self.guard.record(request.headers)
        except Refused as refused:
            log.warning("refused %s %s from %s: %s", request.method, request.path, request.remote, refused.message)
            return web.json_response({"error": refused.message}, status=refused.status)
        request[_TARGET] = target
        return await handler(request)

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def _steps(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "steps": sorted(self.settings.steps),
                "apps": list(self.settings.apps),
                "nodes": [str(n) for n in self.settings.nodes],
            }
        )

    async def _run(self, request: web.Request) -> web.StreamResponse:
        step = request.match_info["step"]
        signed = request[_TARGET]
        spec = self.settings.steps.get(step)
        if spec is None:
            known = ", ".join(sorted(self.settings.steps))
            return web.json_response({"error": f"unknown step `{step}`; this agent runs: {known}"}, status=404)
        try:
            values = json.loads(await request.read())
            target = StepTarget(str(values["app"]), str(values["host"]), values["port"], values.get("version"))
            apps = set(self.settings.apps) or None
            validate_target(target, self.settings.version_pattern, apps, self.settings.node_hostnames)
            command = render_command(step, spec.command, target)
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            return web.json_response({"error": f"bad request body: {error}"}, status=400)
        except StepRefused as refused:
            return web.json_response({"error": refused.message}, status=422)
        # The body is signed too, but what runs must be exactly what the signed target says.
        said = SignedTarget(target.app, target.host, target.port, step, target.version)
        if said != signed:
            return web.json_response(
                {"error": f"the request does not match its signed target ({signed.header()})"}, status=400
            )
        if step in self.running:
            since = time.strftime("%H:%M:%S UTC", time.gmtime(self.running[step]))
            return web.json_response({"error": f"step `{step}` is already running (since {since})"}, status=409)
        self.running[step] = time.time()
        try:
            response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
            await response.prepare(request)

            async def send(line: OutputLine) -> None:
                await response.write(json.dumps({"stream": line.stream, "line": line.line}).encode() + b"\n")

            log.info("running %s for %s", step, target.node)
            # A minimal environment: never the agent's secret (or anything else the agent was started with).
            env = step_environment(target, passthrough=self.settings.env_passthrough)
            result = await run_process(command, spec.timeout, step, target.node, send, env=env)
            await response.write(
                json.dumps(
                    {
                        "done": True,
                        "exit_status": result.exit_status,
                        "duration": result.duration,
                        "error": result.error,
                        "stdout_tail": result.stdout_tail,
                        "stderr_tail": result.stderr_tail,
                    }
                ).encode()
                + b"\n"
            )
            await response.write_eof()
            return response
        finally:
            del self.running[step]


def ssl_context(settings: AgentSettings) -> ssl.SSLContext | None:
    if not settings.tls_cert or not settings.tls_key:
        return None
    # SSLContext directly rather than create_default_context: the latter also honours SSLKEYLOGFILE,
    # and an agent should not write its session keys wherever its environment says.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(settings.tls_cert, settings.tls_key)
    return context


def open_guard(settings: AgentSettings, started: float) -> ReplayGuard:
    """The replay guard with the nonces the agent saw before it (re)started; StateError if unusable."""
    store = NonceStore(Path(settings.state_file) if settings.state_file else None)
    missing = store.load()
    # Written once now, so an unwritable state file stops the agent at start, not at its first request.
    store.save()
    not_before = None
    if missing is not None:
        # Timestamps are whole seconds: from the next whole second on, a timestamp tells a request signed
        # after this start from one signed before it (serve_agent listens only from then on).
        not_before = float(int(started) + 1)
        log.warning("no record of earlier nonces (%s): requests signed before this start are refused", missing)
    return ReplayGuard(settings.secret, store, not_before=not_before)


async def serve_agent(settings: AgentSettings) -> None:
    started = time.time()
    try:
        guard = open_guard(settings, started)
    except (StateError, OSError) as error:
        print(f"agent: state_file: {error}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_CONFIG) from None
    if guard.not_before is not None:
        # At most a second, and only on a start without nonce state: a request that arrived in the rest
        # of this second could not be told from one captured before the start, and would be refused.
        await asyncio.sleep(max(0.0, guard.not_before - time.time()))
    # handler_cancellation: a bot that disconnects mid-step cancels the handler, which kills the step.
    runner = web.AppRunner(Agent(settings, guard).app(), access_log=None, handler_cancellation=True)
    await runner.setup()
    if settings.insecure:
        log.warning(
            "insecure: true: serving plain HTTP; step names, targets and step output cross the network "
            "unencrypted (set tls: {cert, key} outside a trusted network)"
        )
    site = web.TCPSite(runner, settings.host, settings.port, ssl_context=ssl_context(settings))
    await site.start()
    scheme = "https" if settings.tls_cert else "http"
    print(
        f"upstream-bot agent on {scheme}://{settings.host}:{settings.port} pid {os.getpid()} "
        f"(nodes: {', '.join(str(n) for n in settings.nodes)}; steps: {', '.join(sorted(settings.steps))})",
        flush=True,
    )
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()

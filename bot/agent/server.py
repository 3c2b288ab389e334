"""The agent's HTTP server.

- `GET /healthz` (unsigned): liveness.
- `GET /v1/steps` (signed): the steps this agent runs, for the bot's preflight.
- `POST /v1/steps/<step>/run` (signed), body `{"app", "host", "port", "version"}`: runs the step from
  the agent's own config with those values validated and shell-quoted, and streams NDJSON lines:
  `{"stream": "stdout", "line": "..."}` ..., then `{"done": true, "exit_status": 0, "duration": 1.2,
  "error": null}`. A second run of a step already running answers 409. If the bot goes away mid-step
  (abort, crash), the step's processes are killed.
"""

from __future__ import annotations

import json
import logging
import ssl
import time
from typing import Any

from aiohttp import web

from bot.agent.config import AgentSettings
from bot.agent.signing import ReplayGuard
from bot.executors.process import run_process
from commands.steps import OutputLine, StepRefused, StepTarget, render_command, validate_target

log = logging.getLogger(__name__)


class Agent:
    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.guard = ReplayGuard(settings.secret)
        self.running: dict[str, float] = {}

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._verify])
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/v1/steps", self._steps)
        app.router.add_post("/v1/steps/{step}/run", self._run)
        return app

    @web.middleware
    async def _verify(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path == "/healthz":
            return await handler(request)
        body = await request.read()
        refusal = self.guard.check(request.method, request.path_qs, dict(request.headers), body)
        if refusal:
            log.warning("refused %s %s from %s: %s", request.method, request.path, request.remote, refusal)
            return web.json_response({"error": refusal}, status=401)
        return await handler(request)

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def _steps(self, request: web.Request) -> web.Response:
        return web.json_response({"steps": sorted(self.settings.steps), "apps": list(self.settings.apps)})

    async def _run(self, request: web.Request) -> web.StreamResponse:
        step = request.match_info["step"]
        spec = self.settings.steps.get(step)
        if spec is None:
            known = ", ".join(sorted(self.settings.steps))
            return web.json_response({"error": f"unknown step `{step}`; this agent runs: {known}"}, status=404)
        try:
            values = json.loads(await request.read())
            target = StepTarget(str(values["app"]), str(values["host"]), values["port"], values.get("version"))
            apps = set(self.settings.apps) or None
            validate_target(target, self.settings.version_pattern, apps)
            command = render_command(step, spec.command, target)
        except (ValueError, KeyError, TypeError) as error:
            return web.json_response({"error": f"bad request body: {error}"}, status=400)
        except StepRefused as refused:
            return web.json_response({"error": refused.message}, status=422)
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
            result = await run_process(command, spec.timeout, step, target.node, send)
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
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.tls_cert, settings.tls_key)
    return context


async def serve_agent(settings: AgentSettings) -> None:
    import asyncio

    # handler_cancellation: a bot that disconnects mid-step cancels the handler, which kills the step.
    runner = web.AppRunner(Agent(settings).app(), access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, ssl_context=ssl_context(settings))
    await site.start()
    scheme = "https" if settings.tls_cert else "http"
    print(
        f"upstream-bot agent on {scheme}://{settings.host}:{settings.port} "
        f"(steps: {', '.join(sorted(settings.steps))})",
        flush=True,
    )
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()

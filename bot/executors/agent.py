"""The agent executor: asks `upstream-bot agent` on the node to run a step by name, over signed HTTP.

The bot sends only the step name and the validated values; the command lives in the agent's config.
Each request's signature covers its target (app, node, step, version), so the agent of another node
refuses it.
"""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Sequence

import httpx

from bot.agent.signing import SignedTarget, sign
from bot.health.prober import connect_reason
from commands.interfaces import OutputSink
from commands.settings import AppSettings
from commands.steps import OutputLine, OutputTail, StepResult, StepTarget, validate_target

RESULT_GRACE = 30.0  # the agent enforces the step timeout; the client waits this much longer


class AgentExecutor:
    def __init__(
        self,
        app: AppSettings,
        secret: bytes,
        port: int = 7070,
        scheme: str = "https",  # the agent serves TLS unless its agent.yml says insecure: true
        ca_file: str | None = None,
        connect_timeout: float = 10.0,
    ) -> None:
        self.app = app
        self.secret = secret
        self.port = port
        self.scheme = scheme
        self.connect_timeout = connect_timeout
        verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=ca_file) if ca_file else True
        self.client = httpx.AsyncClient(verify=verify, trust_env=False)

    def url(self, host: str) -> str:
        return f"{self.scheme}://{host}:{self.port}"

    def _signed(self, method: str, path: str, target: SignedTarget, body: bytes = b"") -> dict[str, str]:
        return {"Content-Type": "application/json", **sign(self.secret, method, path, body, target)}

    def _refusal(self, host: str, response: httpx.Response) -> str:
        try:
            detail = str(response.json().get("error"))
        except ValueError:
            detail = response.text[:200]
        kind = {
            401: "auth",
            403: "wrong agent",
            404: "unknown step",
            409: "busy",
            422: "refused by the agent",
            503: "agent unavailable",
        }.get(response.status_code, f"HTTP {response.status_code}")
        return f"{kind}: agent at {self.url(host)}: {detail}"

    def _hint(self, error: httpx.HTTPError) -> str:
        """Why a plain-HTTP request may have been dropped: the agent serves TLS unless told otherwise."""
        if self.scheme == "http" and isinstance(error, httpx.RemoteProtocolError):
            return " (agents serve TLS unless their agent.yml says insecure: true; is agent.scheme https?)"
        return ""

    async def check(self, target: StepTarget, steps: Sequence[str]) -> str | None:
        path = "/v1/steps"
        # Signed for the node: the agent answers only if it serves it, so a wrong agent fails the preflight.
        signed = SignedTarget(target.app, target.host, target.port, "", target.version)
        try:
            response = await self.client.get(
                self.url(target.host) + path, headers=self._signed("GET", path, signed), timeout=self.connect_timeout
            )
        except httpx.TimeoutException:
            return f"connect: agent at {self.url(target.host)}: no answer within {self.connect_timeout:g} s"
        except httpx.HTTPError as error:
            return f"connect: agent at {self.url(target.host)}: {connect_reason(error)}{self._hint(error)}"
        if response.status_code != 200:
            return self._refusal(target.host, response)
        known = set(response.json().get("steps", []))
        missing = [s for s in steps if s not in known]
        if missing:
            return (
                f"agent at {self.url(target.host)} does not know step {', '.join(missing)} (it runs: "
                f"{', '.join(sorted(known)) or 'none'})"
            )
        return None

    async def run(self, step: str, target: StepTarget, on_output: OutputSink | None = None) -> StepResult:
        validate_target(target, self.app.release.version_pattern, {self.app.name})
        spec = self.app.release.steps.get(step)
        timeout = spec.timeout if spec else self.app.release.step_timeout
        path = f"/v1/steps/{step}/run"
        body = json.dumps(
            {"app": target.app, "host": target.host, "port": target.port, "version": target.version}
        ).encode()
        started = time.monotonic()
        tail = OutputTail()

        def failed(error: str) -> StepResult:
            return StepResult(
                step, target.node, None, time.monotonic() - started, tuple(tail.stdout), tuple(tail.stderr), error
            )

        limits = httpx.Timeout(timeout + RESULT_GRACE, connect=self.connect_timeout)
        try:
            async with self.client.stream(
                "POST",
                self.url(target.host) + path,
                content=body,
                headers=self._signed(
                    "POST", path, SignedTarget(target.app, target.host, target.port, step, target.version), body
                ),
                timeout=limits,
            ) as response:
                if response.status_code != 200:
                    await response.aread()
                    return failed(self._refusal(target.host, response))
                async for raw in response.aiter_lines():
                    if not raw.strip():
                        continue
                    message = json.loads(raw)
                    if message.get("done"):
                        return StepResult(
                            step,
                            target.node,
                            message.get("exit_status"),
                            float(message.get("duration", time.monotonic() - started)),
                            tuple(tail.stdout),
                            tuple(tail.stderr),
                            message.get("error"),
                        )
                    line = tail.add(message.get("stream", "stdout"), str(message.get("line", "")))
                    if on_output is not None:
                        await on_output(OutputLine(step, target.node, message.get("stream", "stdout"), line))
        except httpx.ConnectTimeout:
            return failed(f"connect: agent at {self.url(target.host)}: no answer within {self.connect_timeout:g} s")
        except httpx.ConnectError as error:
            return failed(f"connect: agent at {self.url(target.host)}: {connect_reason(error)}")
        except httpx.TimeoutException:
            return failed(f"timeout: agent at {self.url(target.host)} sent no result within {timeout:g} s")
        except httpx.HTTPError as error:
            return failed(f"connection lost: agent at {self.url(target.host)}: {error}{self._hint(error)}")
        return failed(f"connection lost: agent at {self.url(target.host)} ended the stream without a result")

    async def close(self) -> None:
        await self.client.aclose()

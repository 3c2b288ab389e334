"""The executor an app's `release.executor` names, built from the config."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from bot.config import AGENT_SECRET_ENV, Config
from bot.executors.agent import AgentExecutor
from bot.executors.local import LocalExecutor
from bot.executors.ssh import SshExecutor
from commands.interfaces import Executor
from commands.settings import AppSettings


class ExecutorConfigError(Exception):
    pass


def agent_secret(config: Config, env: Mapping[str, str]) -> bytes:
    if config.agent.secret_file:
        try:
            return Path(config.agent.secret_file).read_bytes().strip()
        except OSError as error:
            raise ExecutorConfigError(f"agent.secret_file: {config.agent.secret_file}: {error.strerror}") from None
    secret = env.get(AGENT_SECRET_ENV, "").strip().encode()
    if not secret:
        raise ExecutorConfigError(f"set agent.secret_file or {AGENT_SECRET_ENV} to talk to the node agents")
    return secret


def executor_for(app: AppSettings, config: Config, env: Mapping[str, str] | None = None) -> Executor:
    """A fresh executor for one release of `app` (close it at the end: it holds connections)."""
    kind = app.release.executor
    if kind == "ssh":
        return SshExecutor(app, config.ssh, config.ssh_hosts)
    if kind == "agent":
        agent = config.agent
        return AgentExecutor(
            app,
            agent_secret(config, os.environ if env is None else env),
            agent.port,
            agent.scheme,
            agent.ca_file,
            agent.connect_timeout,
        )
    return LocalExecutor(app)

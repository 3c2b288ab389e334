"""A release's plan: which nodes, in which batches, which steps and waits, and what it will take at least."""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field

from commands.addresses import ServerAddress
from commands.errors import UserError
from commands.interfaces import NginxView, ProbeResult, quoted
from commands.requests import ReleaseRequest
from commands.servers import Upstream
from commands.settings import AppSettings
from commands.steps import StepRefused, StepTarget, render_command, validate_target


@dataclass(frozen=True)
class ReleasePlan:
    app: str
    requester: str
    version: str | None
    strategy: str  # "serial", "batch 2", "batch 25%"
    batches: tuple[tuple[ServerAddress, ...], ...]
    steps: tuple[str, ...]
    canary: bool = False
    force: bool = False
    dry_run: bool = False
    skipped: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    # Fewer than two servers serving and healthy: only with --force and an explicit second confirmation.
    needs_second_confirmation: bool = False
    approval_required: bool = False
    approvers: tuple[str, ...] = ()
    estimated_min: float = 0.0
    waits: tuple[str, ...] = ()
    reason: str | None = None  # --reason, recorded in the history and shown in the channel
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    @property
    def nodes(self) -> tuple[ServerAddress, ...]:
        return tuple(a for batch in self.batches for a in batch)

    @property
    def title(self) -> str:
        version = f" {self.version}" if self.version else ""
        canary = ", canary first" if self.canary else ""
        return f"Release {self.app}{version} ({self.strategy}{canary})"

    def lines(self) -> list[str]:
        lines = [f"{len(self.nodes)} node(s) in {len(self.batches)} batch(es); steps: {' -> '.join(self.steps)}"]
        for i, batch in enumerate(self.batches, 1):
            label = "canary" if self.canary and i == 1 else f"batch {i}"
            lines.append(f"  {label}: {', '.join(str(a) for a in batch)}")
        lines += [f"  wait: {w}" for w in self.waits]
        lines.append(f"  estimated minimum: {self.estimated_min:.0f} s (plus the steps' own time)")
        lines += [f"  skipped: {s}" for s in self.skipped]
        lines += [f"  ! {w}" for w in self.warnings]
        if self.approval_required:
            lines.append(f"  approval: required from {', '.join(self.approvers)} (not the requester)")
        return lines


def node_healthy(address: ServerAddress, probes: dict[ServerAddress, ProbeResult], view: NginxView) -> str | None:
    """Why a node is not healthy right now, or None."""
    probe = probes.get(address)
    if probe is not None and not probe.healthy:
        return f"probe failed ({quoted(probe.detail)})"
    check = view.checks.get(str(address)) if view.checks is not None else None
    if check == "down":
        return "nginx's check reports it down"
    if check == "failing":
        return "nginx's check failed its last check"
    if check == "unchecked":
        return "nginx has not checked it yet"
    return None


def step_problems(
    app: AppSettings, steps: tuple[str, ...], version: str | None, nodes: tuple[ServerAddress, ...]
) -> list[str]:
    """Everything the steps need, checked for every node before anything is drained: a `{version}`
    without `--version`, a value a step would refuse. (Agent apps keep their commands on the nodes:
    the agent's own check covers them.)"""
    problems: list[str] = []
    for address in nodes:
        target = StepTarget(app.name, address.host, address.port, version)
        try:
            validate_target(target, app.release.version_pattern, {app.name})
            for step in steps:
                spec = app.release.steps.get(step)
                if spec is None:
                    raise StepRefused(f"{app.name} has no step `{step}`")
                render_command(step, spec.command, target)
        except StepRefused as refused:
            problem = refused.message.replace("; nothing was run.", ".")
            if problem not in problems:
                problems.append(problem)
    return problems


def minimum_per_batch(app: AppSettings) -> float:
    """Waits no batch can avoid: drain propagation + drain_wait, the rise, restore propagation."""
    rise = (app.health.rise - 1) * app.health.interval if app.health.url else 0.0
    return app.nginx.propagation + app.release.drain_wait + rise + app.nginx.propagation


def plan_release(
    app: AppSettings,
    request: ReleaseRequest,
    requester: str,
    upstream: Upstream,
    probes: dict[ServerAddress, ProbeResult],
    view: NginxView,
) -> ReleasePlan:
    steps = tuple(app.release.steps)
    if not steps:
        raise UserError(f"{app.name} has no release.steps configured; nothing to run on the nodes.")
    serving = [s.address for s in upstream.servers if not s.drained]
    skipped = tuple(f"{s.address}: drained before the release (left as it is)" for s in upstream.servers if s.drained)
    if not serving:
        raise UserError(f"{app.name} has no serving server to release.")
    problems = step_problems(app, steps, request.version, tuple(sorted(serving)))
    if problems:
        raise UserError(f"Refused: {' '.join(problems)} Nothing was drained.")
    healthy = [a for a in serving if node_healthy(a, probes, view) is None]
    sick = {a: why for a in serving if (why := node_healthy(a, probes, view))}
    if sick:
        listed = "; ".join(f"{a}: {why}" for a, why in sorted(sick.items()))
        raise UserError(
            f"Refused: not every node of {app.name} is healthy ({listed}). Nothing was drained. "
            f"Drain the sick node first (a drained node is left out of the release), then try again."
        )
    warnings: list[str] = []
    second = False
    if len(healthy) < 2:
        if not request.force:
            raise UserError(
                f"Refused: {app.name} has {len(healthy)} server(s) serving and healthy; a release needs two, so "
                f"that one keeps serving while the other is deployed. `--force` releases anyway (every request "
                f"fails while the only node is drained), with a second confirmation."
            )
        second = True
        warnings.append(f"{app.name} has fewer than two healthy serving servers: it will be out of traffic")
    if request.batch_percent is not None:
        exact = len(serving) * request.batch_percent / 100
        size = max(1, math.ceil(exact))
        strategy = f"batch {request.batch_percent}%"
        if size != exact:
            warnings.append(
                f"{request.batch_percent}% of {len(serving)} node(s) is {exact:g}: rounded up to {size} a batch "
                f"({size * 100 // max(1, len(serving))}% out of traffic at once)"
            )
    else:
        size = request.batch
        strategy = "serial" if size == 1 else f"batch {size}"
    limit = max(1, len(healthy) - 1)
    if size > limit and not second:
        warnings.append(f"batch size {size} lowered to {limit}: at least one server must keep serving")
        size = limit
    order = sorted(serving)
    batches: list[tuple[ServerAddress, ...]] = []
    rest = order
    if request.canary and len(order) > 1:
        batches.append((order[0],))
        rest = order[1:]
    batches += [tuple(rest[i : i + size]) for i in range(0, len(rest), size)]
    waits = [
        f"after each drain: {app.nginx.propagation:g} s for nginx-upsync to see it"
        + (" and until upstream_show lists it down" if app.nginx.list_url else "")
        + f", then drain_wait {app.release.drain_wait:g} s for in-flight requests",
    ]
    if app.health.url:
        waits.append(
            f"probe every {app.health.interval:g} s until {app.health.rise} passes, failing after "
            f"{app.health.window:g} s"
        )
    waits.append(
        f"after each restore: {app.nginx.propagation:g} s"
        + (", until upstream_show lists it serving" if app.nginx.list_url else "")
        + (" and nginx's check reports it up" if app.nginx.status_url else "")
    )
    if request.canary:
        waits.append("after the canary: until someone presses Continue")
    return ReleasePlan(
        app=app.name,
        requester=requester,
        version=request.version,
        strategy=strategy,
        batches=tuple(batches),
        steps=steps,
        canary=request.canary and len(order) > 1,
        force=request.force,
        dry_run=request.dry_run,
        skipped=skipped,
        warnings=tuple(warnings),
        needs_second_confirmation=second,
        approval_required=app.approval == "required",
        approvers=app.approvers,
        estimated_min=minimum_per_batch(app) * len(batches),
        waits=tuple(waits),
        reason=request.reason,
    )

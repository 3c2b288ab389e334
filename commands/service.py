"""The command logic: typed request in, events out, through the store, prober and nginx readers."""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import json
import logging
import time
from dataclasses import replace
from typing import Any

from commands.access import AccessPolicy, mention
from commands.addresses import ServerAddress
from commands.errors import StoreError, UserError
from commands.events import (
    AbortRequested,
    AlertsReport,
    Announcement,
    ApprovalRequested,
    ChangeApplied,
    ConfirmationNeeded,
    Help,
    HistoryReport,
    Notice,
    Notifier,
    Problem,
    ReleaseDryRun,
    ReleasePlanned,
    ResumeRequested,
    ServerStatus,
    StatusReport,
    WatchOffRequested,
)
from commands.grammar import CHANGING, usage
from commands.history import History, HistoryEntry, NoHistory, iso, where_of
from commands.interfaces import Clock, NginxReader, NginxView, Prober, UpstreamStore, quoted
from commands.journal import JournalEntry
from commands.plans import (
    CAS_ATTEMPTS,
    ChangePlan,
    ChangeResult,
    KeyChange,
    describe_difference,
    new_entry_fields,
    serving_after,
)
from commands.probing import probe_nodes
from commands.quoting import without_credentials
from commands.release_engine import node_summary
from commands.release_plan import ReleasePlan
from commands.release_state import Phase, ReleaseState, Status
from commands.releases import Releases, held_by
from commands.requests import (
    AddRequest,
    AlertsRequest,
    DrainRequest,
    HelpRequest,
    HistoryRequest,
    MarkRequest,
    ReleaseAbortRequest,
    ReleaseRequest,
    ReleaseResumeRequest,
    ReleaseStatusRequest,
    RemoveRequest,
    Request,
    StatusRequest,
    UndrainRequest,
    WatchRequest,
)
from commands.resume import ResumeMode
from commands.servers import OVERSIZE, ServerEntry, Upstream
from commands.settings import AppSettings
from commands.watch import Incident, WatchControl
from commands.writes import Written, delete_entry, write_entry

log = logging.getLogger(__name__)

SILENCE_FOR = 3600.0  # `/upstream silence`, as the alert's "Silence 1 h"
WATCH = "turn the watch of"  # what the policy's refusal says a person may not do to the watch


def _when(at: float) -> str:
    return time.strftime("%H:%M UTC", time.gmtime(at))


class Outcome(enum.Enum):
    DONE = "done"  # finished (also "nothing to do")
    PENDING = "pending"  # waiting for a confirmation
    REFUSED = "refused"  # bad input or a guard: nothing changed
    FAILED = "failed"  # an error on the way (Consul, a write that did not happen)

    @property
    def ok(self) -> bool:
        return self in (Outcome.DONE, Outcome.PENDING)


class CommandService:
    def __init__(
        self,
        apps: dict[str, AppSettings],
        store: UpstreamStore,
        prober: Prober,
        nginx: NginxReader,
        clock: Clock,
        releases: Releases | None = None,
        watches: WatchControl | None = None,
        policy: AccessPolicy | None = None,
        history: History | None = None,
    ) -> None:
        self.releases = releases
        self.watches = watches
        # No policy given: nobody but the local user may change anything (safe by default).
        self.policy = policy or AccessPolicy(apps)
        self.history: History = history or NoHistory()
        self.apps = apps
        self.store = store
        self.prober = prober
        self.nginx = nginx
        self.clock = clock
        self._audit_writes: set[asyncio.Future[None]] = set()  # written on, whoever was waiting for them

    # -- entry points -------------------------------------------------------------------------

    async def handle(self, request: Request, requester: str, notifier: Notifier) -> Outcome:
        """Answer a request: a report, a confirmation to ask, or a refusal. Changes nothing itself,
        except `/undrain` without `--force`, whose probe is its safeguard."""
        try:
            return await self._handle(request, requester, notifier)
        except UserError as error:
            await notifier.emit(Problem(error.message))
            return Outcome.REFUSED
        except StoreError as error:
            if isinstance(request, CHANGING):
                await notifier.emit(Problem(f"Nothing was changed: {error.message}"))
            else:  # a read: there was nothing to change; say what could not be read
                await notifier.emit(Problem(f"Could not read Consul: {error.message}. Try again when it answers."))
            return Outcome.FAILED

    async def confirm(self, plan: ChangePlan, stage: int, actor: str, notifier: Notifier) -> Outcome:
        """Someone pressed Confirm on `plan` at `stage`: the policy is asked again, at press time."""
        if await self._refused(notifier, await self.press_refusal(plan, actor)):
            return Outcome.REFUSED
        if plan.needs_second_confirmation and stage < 2:
            await notifier.emit(ConfirmationNeeded(plan, stage=2))
            return Outcome.PENDING
        try:
            return await self._apply(plan, actor, notifier)
        except StoreError as error:
            await notifier.emit(Problem(f"{plan.title} stopped: {error.message}"))
            return Outcome.FAILED

    # -- dispatch -----------------------------------------------------------------------------

    async def _handle(self, request: Request, requester: str, notifier: Notifier) -> Outcome:
        match request:
            case HelpRequest(command=command):
                await notifier.emit(Help(usage(command)))
                return Outcome.DONE
            case StatusRequest():
                await notifier.emit(await self.status(request))
                return Outcome.DONE
            case DrainRequest() | UndrainRequest() | AddRequest() | RemoveRequest():
                if request.app is not None:  # asked before anything is read or probed for them
                    await self._may_change(requester, [self.app(request.app).name], "change")
                plan = await self.plan(request, requester)
                if plan is None:
                    await notifier.emit(Notice(self._nothing_to_do(request)))
                    return Outcome.DONE
                await self._may_change(requester, [c.app for c in plan.changes], plan.action)
                if plan.action == "add" and plan.probe_first:
                    # Probed before the question, so the question shows what the new server answers.
                    failed = await self._probe_before_write(plan)
                    if failed:
                        raise UserError(failed)
                    plan = replace(plan, warnings=(*plan.warnings, "probe: passed just now"))
                await notifier.emit(ConfirmationNeeded(plan))
                return Outcome.PENDING
            case ReleaseRequest() | ReleaseStatusRequest() | ReleaseAbortRequest():
                return await self._release_request(request, requester, notifier)
            case ReleaseResumeRequest(app=name, mode=mode, reason=reason):
                app = self.app(name)
                await self._may_change(requester, [app.name], "release")
                releases = self._releases()
                # Refused before the question (nothing to take up, a step may still run, ...): nothing is
                # asked that the confirmation would then refuse.
                entry = await releases.takeable(app.name, None, ResumeMode(mode))
                summary = releases.summary(entry)
                await notifier.emit(ResumeRequested(app.name, entry.release_id, mode, requester, summary, reason))
                return Outcome.PENDING
            case WatchRequest(app=name, on=on):
                app = self.app(name)
                await self._may_change(requester, [app.name], WATCH)
                if self.watches is None:
                    raise UserError("The health watch does not run in this process; nothing was changed.")
                if not on:
                    await notifier.emit(WatchOffRequested(app.name, requester, request.reason))
                    return Outcome.PENDING
                return await self.set_watch(app.name, True, requester, request.reason, notifier)
            case AlertsRequest(app=name):
                await notifier.emit(self.alerts(name))
                return Outcome.DONE
            case HistoryRequest(app=name, address=address, limit=limit):
                app = self.app(name)
                target = str(address) if address else None
                entries = await self.history.entries(app.name, target, limit)
                await notifier.emit(HistoryReport(app.name, target, tuple(entries)))
                return Outcome.DONE
            case MarkRequest(app=name, address=address, what=what):
                return await self._mark(self.app(name).name, address, what, requester, notifier)
        raise UserError(f"unsupported request {request!r}")

    async def _mark(
        self, app: str, address: ServerAddress | None, what: str, requester: str, notifier: Notifier
    ) -> Outcome:
        """`/upstream ack|silence`: the alert buttons for a terminal (and for anyone who prefers typing)."""
        await self._may_change(requester, [app], what)  # a refusal first: who may not act learns nothing more
        watch = self.watches.watch(app) if self.watches else None
        found = next((i for i in watch.incidents() if i.address == address), None) if watch else None
        what_of = f"{address} of {app}" if address else f"{app} (the watch cannot see it)"
        if found is None:
            await notifier.emit(Notice(f"No open incident for {what_of}; nothing to {what}. `/upstream alerts {app}`."))
            return Outcome.REFUSED
        until = self.clock.now() + SILENCE_FOR
        marked = await self.mark_incident(app, found.id, what, requester, until, notifier)
        if marked is None:
            await notifier.emit(Notice(f"The incident of {what_of} is already resolved."))
            return Outcome.REFUSED
        incident, now = marked
        if not now:
            by = mention(incident.acknowledged_by or "")
            await notifier.emit(Notice(f"The incident of {what_of} was already acknowledged by {by}."))
            return Outcome.DONE
        if what == "silence":
            text = f"Silenced for 1 h: no reminder and no new alert for {what_of} until {_when(until)}."
        else:
            text = f"Acknowledged by {requester}: no more reminders for {what_of}; its recovery is still said."
        await notifier.emit(Notice(text))
        return Outcome.DONE

    async def set_watch(self, app: str, on: bool, who: str, reason: str | None, notifier: Notifier) -> Outcome:
        """Turn the watch of `app` on or off (off was confirmed); announced in the channel, naming who."""
        refusal = await self.policy.change_refusal(who, [app], WATCH)
        if await self._refused(notifier, refusal or self._no_watch()):
            return Outcome.REFUSED
        text = self.watches.set_enabled(app, on)
        await self.record(notifier, app, f"watch.{'on' if on else 'off'}", who, reason=reason, outcome=text)
        why = f" ({reason})" if reason else ""
        state = "on" if on else "OFF"
        await notifier.emit(Announcement(f"Health watch of {app} turned {state} by {mention(who)}{why}."))
        return Outcome.DONE

    def _no_watch(self) -> str | None:
        return "The health watch does not run in this process; nothing changed." if self.watches is None else None

    async def _refused(self, notifier: Notifier, refusal: str | None) -> bool:
        """A press or an answer the policy refused: told, and True (nothing else is done)."""
        if refusal:
            await notifier.emit(Problem(refusal))
        return bool(refusal)

    async def _may_change(self, who: str, apps: list[str], what: str) -> None:
        refusal = await self.policy.change_refusal(who, apps, what)
        if refusal:
            raise UserError(refusal)

    async def record(
        self,
        notifier: Notifier,
        app: str,
        what: str,
        who: str,
        target: str = "",
        before: dict[str, Any] | None = None,
        after: dict[str, Any] | None = None,
        reason: str | None = None,
        force: bool = False,
        outcome: str | None = None,
    ) -> None:
        """One audit entry; `where` is the channel or the terminal the notifier speaks to."""
        entry = HistoryEntry(
            app, what, who, where_of(notifier), target, iso(self.clock.now()), before, after, reason, force, outcome
        )
        await self.history.record(entry)

    # -- releases ---------------------------------------------------------------------------------

    def _releases(self) -> Releases:
        if self.releases is None:
            raise UserError("Releases are not set up in this bot (no executor configured); nothing was changed.")
        return self.releases

    async def _release_request(
        self,
        request: ReleaseRequest | ReleaseStatusRequest | ReleaseAbortRequest,
        requester: str,
        notifier: Notifier,
    ) -> Outcome:
        app = self.app(request.app)
        if isinstance(request, ReleaseAbortRequest) or (isinstance(request, ReleaseRequest) and not request.dry_run):
            await self._may_change(requester, [app.name], "release")
        releases = self._releases()
        if isinstance(request, ReleaseStatusRequest):
            await notifier.emit(await releases.status(app.name))
            return Outcome.DONE
        if isinstance(request, ReleaseAbortRequest):
            engine = releases.engine(app.name)
            if engine is not None:
                release_id = engine.plan.id
            else:
                holder = await releases.locks.holder(app.name)
                if holder is None:
                    raise UserError(f"No release of {app.name} is running; nothing to abort.")
                release_id = holder.release_id  # run by another replica: asked through Consul
            await notifier.emit(AbortRequested(app.name, release_id, requester, request.reason))
            return Outcome.PENDING
        plan = await releases.plan(app, request, requester)
        if plan.dry_run:
            await notifier.emit(ReleaseDryRun(plan))
            return Outcome.DONE
        await notifier.emit(ReleasePlanned(plan))
        return Outcome.PENDING

    async def start_release(self, plan: ReleasePlan, stage: int, actor: str, notifier: Notifier) -> Outcome:
        """Start was pressed on the plan (stage 2: the explicit --force confirmation)."""
        if await self._refused(notifier, await self.press_refusal(plan, actor)):
            return Outcome.REFUSED
        if plan.needs_second_confirmation and stage < 2:
            await notifier.emit(ReleasePlanned(plan, stage=2))
            return Outcome.PENDING
        if plan.approval_required:
            await notifier.emit(ApprovalRequested(plan))
            return Outcome.PENDING
        return await self._run_release(plan, None, notifier)

    async def press_refusal(self, subject: ChangePlan | ReleasePlan | WatchOffRequested, who: str) -> str | None:
        """Why `who` may not press Confirm/Start on `subject` (the same question confirm(), start_release()
        and set_watch() ask); front ends ask it before claiming a button, so a refused press uses nothing up."""
        if isinstance(subject, ChangePlan):
            return await self.policy.change_refusal(who, [c.app for c in subject.changes], subject.action)
        if isinstance(subject, ReleasePlan):
            return await self.policy.change_refusal(who, [subject.app], "release")
        return await self.policy.change_refusal(who, [subject.app], WATCH)

    async def approval_refusal(self, plan: ReleasePlan, approver: str) -> str | None:
        """Why `approver` may not approve `plan` now: an approver, never the requester, and the requester
        must still be allowed to release it (they may have left the operators since asking). The same
        question before the claim (front ends) and when the approval acts (approve_release)."""
        refusal = await self.policy.approval_refusal(approver, plan.app, plan.requester)
        return refusal or await self.policy.change_refusal(plan.requester, [plan.app], "release")

    async def approve_release(self, plan: ReleasePlan, approver: str, notifier: Notifier) -> Outcome:
        if await self._refused(notifier, await self.approval_refusal(plan, approver)):
            return Outcome.REFUSED
        await self.record(notifier, plan.app, "approve", approver, plan.id, reason=plan.reason, outcome=plan.title)
        return await self._run_release(plan, approver, notifier)

    async def reject_release(self, plan: ReleasePlan, who: str, reason: str | None, notifier: Notifier) -> Outcome:
        """Recorded with the reason; the release never starts."""
        if await self._refused(notifier, await self.policy.rejection_refusal(who, plan.app, plan.requester)):
            return Outcome.REFUSED
        await self.record(notifier, plan.app, "reject", who, plan.id, reason=reason, outcome=plan.title)
        return Outcome.DONE

    async def _run_release(self, plan: ReleasePlan, approver: str | None, notifier: Notifier) -> Outcome:
        started = f"{plan.title}" + (f", approved by {approver}" if approver else "")
        await self.record(
            notifier, plan.app, "release.start", plan.requester, plan.id, reason=plan.reason, force=plan.force,
            outcome=started,
        )
        try:
            state = await self._releases().run(plan, approver, notifier)
        except UserError as error:
            await notifier.emit(Problem(error.message))
            await self.record(notifier, plan.app, "release.finish", plan.requester, plan.id, outcome=error.message)
            return Outcome.REFUSED
        except StoreError as error:
            await notifier.emit(Problem(f"{plan.title} did not start: {error.message}"))
            await self.record(notifier, plan.app, "release.finish", plan.requester, plan.id, outcome=error.message)
            return Outcome.FAILED
        await self._record_end(notifier, state)
        return Outcome.DONE if state.status is Status.SUCCEEDED else Outcome.FAILED

    async def _record_end(self, notifier: Notifier, state: ReleaseState) -> None:
        plan = state.plan
        for address, node in state.nodes.items():
            steps = ", ".join(f"{step} {seconds:.1f} s" for step, seconds in node.durations.items()) or "no step run"
            await self.record(
                notifier, plan.app, "release.node", plan.requester, str(address),
                outcome=f"{plan.id}: {node_summary(node)}; {steps}",
            )
        await self.record(
            notifier, plan.app, "release.finish", plan.requester, plan.id,
            outcome=f"{state.status.value}: {state.message}",
        )

    async def abort_release(
        self, app: str, release_id: str, by: str, notifier: Notifier, reason: str | None = None
    ) -> Outcome:
        if await self._refused(notifier, await self.policy.change_refusal(by, [app], "abort a release of")):
            return Outcome.REFUSED
        releases = self._releases()
        engine = releases.engine(app)
        if engine is None:
            return await self._abort_elsewhere(app, release_id, by, notifier, reason)
        if engine.plan.id != release_id:
            await notifier.emit(Problem(f"That release of {app} is no longer running; nothing to abort."))
            return Outcome.REFUSED
        if not engine.abort(by):
            await notifier.emit(Notice(f"The release of {app} is already stopping."))
            return Outcome.DONE
        await self.record(notifier, app, "release.abort", by, release_id, reason=reason, outcome=engine.plan.title)
        await notifier.emit(
            Notice(
                f"Abort of {engine.plan.title} requested: it stops before the next step; "
                "a stopped node is started and probed first."
            )
        )
        return Outcome.DONE

    async def _abort_elsewhere(
        self, app: str, release_id: str, by: str, notifier: Notifier, reason: str | None
    ) -> Outcome:
        """The release runs on another replica: the abort is asked for in Consul, where it looks every second."""
        releases = self._releases()
        holder = await releases.locks.holder(app)
        if holder is None or holder.release_id != release_id or releases.journal is None:
            await notifier.emit(Problem(f"That release of {app} is no longer running; nothing to abort."))
            return Outcome.REFUSED
        await releases.journal.request_abort(app, release_id, by)
        await self.record(notifier, app, "release.abort", by, release_id, reason=reason, outcome=f"via {holder.holder}")
        await notifier.emit(
            Notice(
                f"Abort of the release of {app} asked of {holder.holder}, which runs it: it stops before the next "
                "step; a stopped node is started and probed first. `/release status` follows it."
            )
        )
        return Outcome.DONE

    async def resume_refusal(self, app: str, release_id: str, mode: str, who: str) -> str | None:
        """Why `who` may not take up this release in `mode` now: asked by front ends before a press uses
        the buttons up (resume_release asks it all again when it acts)."""
        refusal = await self.policy.change_refusal(who, [app], "release")
        if refusal or mode not in {m.value for m in ResumeMode}:
            return refusal or f"`{mode}` is not a way to take up a release (resume, restore, leave)."
        try:
            return await self._releases().resume_refusal(app, release_id, ResumeMode(mode))
        except StoreError as error:
            return f"Consul cannot be read ({error.message}); nothing was changed."

    async def resume_release(
        self, app: str, release_id: str, mode: str, by: str, notifier: Notifier, reason: str | None = None
    ) -> Outcome:
        """Resume, Restore or Leave on a release whose bot died (a button, or a confirmed
        `/release resume`): the same rights as starting a release of the app."""
        if await self._refused(notifier, await self.policy.change_refusal(by, [app], "release")):
            return Outcome.REFUSED
        how = ResumeMode(mode)
        releases = self._releases()
        async def taken(entry: JournalEntry) -> None:  # under the lock: a second press is refused unrecorded
            await self.record(notifier, app, f"release.{how.value}", by, release_id, reason=reason, outcome=entry.title)

        try:
            state = await releases.resume(app, release_id, how, by, notifier, taken)
        except UserError as error:
            await notifier.emit(Problem(error.message))
            return Outcome.REFUSED
        except StoreError as error:
            await notifier.emit(Problem(f"The release of {app} was not taken up: {error.message}"))
            return Outcome.FAILED
        await self._record_end(notifier, state)
        if how is ResumeMode.LEAVE:
            return Outcome.DONE
        ok = state.status is Status.SUCCEEDED or (
            how is ResumeMode.RESTORE and not state.left_drained and not state.unsure
        )
        return Outcome.DONE if ok else Outcome.FAILED

    async def decide(self, app: str, decision_id: str, decision: str, by: str, notifier: Notifier) -> Outcome:
        if await self._refused(notifier, await self.policy.change_refusal(by, [app], "steer a release of")):
            return Outcome.REFUSED
        engine = self._releases().engine(app)
        problem = "That release is no longer running." if engine is None else engine.decide(decision_id, decision, by)
        if problem:
            await notifier.emit(Problem(problem))
            return Outcome.REFUSED
        assert engine is not None
        # Its own task, kept: a front end that asks in place (the terminal) answers from inside the release's
        # DecisionNeeded task, which the release cancels as soon as it has the answer; the audit entry is
        # written all the same, and `settle()` waits for it before the process ends.
        write = asyncio.ensure_future(
            self._record_kept(notifier, app, "release.decision", by, engine.plan.id, outcome=decision)
        )
        self._audit_writes.add(write)
        write.add_done_callback(self._audit_writes.discard)
        await asyncio.shield(write)
        return Outcome.DONE

    async def _record_kept(self, notifier: Notifier, app: str, what: str, who: str, target: str, outcome: str) -> None:
        """`record` for a write nobody may be left waiting on: its failure is logged here, not lost."""
        try:
            await self.record(notifier, app, what, who, target, outcome=outcome)
        except Exception:
            log.exception("audit entry %s of %s by %s not written", what, app, who)

    async def settle(self, timeout: float = 5.0) -> None:
        """Wait (bounded) for audit writes whose callers were cancelled; a failure is logged, as any."""
        if self._audit_writes:
            _, late = await asyncio.wait(set(self._audit_writes), timeout=timeout)
            if late:  # said, so an audit entry missing later is explained
                log.error("%d audit entr(ies) not written within %g s of stopping: given up", len(late), timeout)

    async def mark_incident(
        self, app: str, incident: str, what: str, by: str, until: float, notifier: Notifier
    ) -> tuple[Incident, bool] | None:
        """An alert's Silence or Acknowledge button: operators only. None when the incident is over; else
        the incident and whether this marked it (False: it was acknowledged already, by whoever it names:
        a second press or a second person changes and records nothing)."""
        await self._may_change(by, [app], what)
        watch = self.watches.watch(app) if self.watches else None
        if watch is None:
            return None
        current = watch.find(incident)
        if what == "acknowledge" and current is not None and current.acknowledged_by is not None:
            return current, False
        found = watch.silence(incident, until) if what == "silence" else watch.acknowledge(incident, by)
        if found is None:
            return None
        target = app if found.address is None else str(found.address)  # an app-level incident: the app
        await self.record(notifier, app, what, by, target, outcome=f"incident {incident}")
        return found, True

    async def mark_group(
        self, app: str, group: str, what: str, by: str, until: float, notifier: Notifier
    ) -> list[Incident]:
        """A grouped alert's Silence all or Acknowledge all: every open incident announced in it, with the
        same access check as one incident's button; those marked now (none: all resolved, or acknowledged)."""
        await self._may_change(by, [app], what)
        watch = self.watches.watch(app) if self.watches else None
        if watch is None:
            return []
        marked = watch.silence_group(group, until) if what == "silence" else watch.acknowledge_group(group, by)
        if marked:
            nodes = ", ".join(str(i.address) for i in marked)
            outcome = f"grouped alert {group}: {len(marked)} incident(s)"
            await self.record(notifier, app, what, by, nodes, outcome=outcome)
        return marked

    def alerts(self, only: str | None = None) -> AlertsReport:
        names = [self.app(only).name] if only else sorted(self.apps)
        incidents: list[Incident] = []
        watching, paused = [], []
        for name in names:
            watch = self.watches.watch(name) if self.watches else None
            if watch is None:
                continue
            (watching if watch.enabled else paused).append(name)
            incidents += watch.incidents()
        return AlertsReport(tuple(sorted(incidents, key=lambda i: i.failing_since)), tuple(watching), tuple(paused))

    # -- apps -----------------------------------------------------------------------------------

    def app(self, name: str) -> AppSettings:
        if name not in self.apps:
            known = ", ".join(f"`{a}`" for a in sorted(self.apps)) or "none configured"
            raise UserError(f"unknown app `{name}`; known apps: {known}.")
        return self.apps[name]

    async def _read_all(self, only: str | None) -> list[tuple[AppSettings, Upstream]]:
        apps = [self.app(only)] if only else [self.apps[name] for name in sorted(self.apps)]
        # Apps may share an upstream folder: read each folder once.
        folders = sorted({a.upstream for a in apps})
        reads = await asyncio.gather(*(self.store.read(folder) for folder in folders))
        by_folder = dict(zip(folders, reads, strict=True))
        seen: set[str] = set()
        result = []
        for app in apps:
            if app.upstream in seen:
                continue
            seen.add(app.upstream)
            result.append((app, by_folder[app.upstream]))
        return result

    # -- status ---------------------------------------------------------------------------------

    async def status(self, request: StatusRequest) -> StatusReport:
        app = self.app(request.app)
        upstream, view = await asyncio.gather(self.store.read(app.upstream), self.nginx.read(app.upstream))
        probes = await probe_nodes(self.prober, app, [s.address for s in upstream.servers])
        drains = await self._drain_notes(app.name, upstream) if upstream.serving < len(upstream.servers) else {}
        servers = []
        for entry in upstream.servers:
            key = str(entry.address)
            status = ServerStatus(
                address=entry.address,
                weight=entry.weight,
                max_fails=entry.max_fails,
                fail_timeout=entry.fail_timeout,
                drained=entry.drained,
                invalid_value=entry.invalid_value,
                nginx_check=None if view.checks is None else view.checks.get(key, "unknown"),
                nginx_listed=_listed(view, key),
                probe=probes.get(entry.address),
                drained_note=drains.get(str(entry.address)) if entry.drained else None,
            )
            servers.append(replace(status, disagreement=_disagreement(status)))
        notes = [quoted(e) for e in view.errors]  # nginx's answers (and errors) are outside words
        known = {str(s.address) for s in upstream.servers}
        for source in (view.checks or {}, view.listed_down or {}):
            for extra in sorted(set(source) - known):
                note = f"nginx knows {extra}, Consul does not list it (stale nginx state or a deleted key)"
                if note not in notes:
                    notes.append(note)
        for key in upstream.skipped_keys:
            notes.append(f"key `{key}` is not IPv4:port: nginx-upsync-module skips it")
        for entry in upstream.servers:
            if entry.invalid_value is None and entry.down_flag is None:
                _, raw = entry.raw("down")
                notes.append(
                    f"{entry.address}: down={json.dumps(raw)} is invalid: nginx reads this as serving "
                    "(nginx-upsync-module logs it and serves the server); write 0 or 1. A release treats it as "
                    "serving; the guards never count it as a serving server."
                )
            notes.extend(f"{entry.address}: {misread}" for misread in entry.misread())
        for status in servers:
            if status.invalid_value and status.invalid_value.startswith(OVERSIZE):
                notes.append(
                    f"{status.address}: value is {status.invalid_value}: what nginx makes of it is undefined "
                    "(it may corrupt its neighbours' settings); keep values well under 1 KB"
                )
            elif status.invalid_value:
                notes.append(
                    f"{status.address}: value is {status.invalid_value}; nginx uses the defaults and serves it"
                )
        if not upstream.servers:
            notes.append(f"Consul has no servers under `{app.upstream}/`.")
        return StatusReport(
            app.name, app.upstream, tuple(sorted(servers, key=lambda s: s.address)), tuple(notes), request.page
        )

    async def _drain_notes(self, app: str, upstream: Upstream) -> dict[str, str]:
        """For each drained server: who drained it, when and why, from the history (best effort)."""
        try:
            entries = await self.history.entries(app, None, 200)
        except StoreError:
            return {}
        notes: dict[str, str] = {}
        for entry in entries:  # newest first: the first drain found for a node is the one in force
            if entry.target in notes or entry.what not in ("drain", "undrain", "release.node"):
                continue
            if entry.what == "drain" and entry.after is not None:
                why = f": {entry.reason}" if entry.reason else ""
                notes[entry.target] = f"drained by {mention(entry.who)} at {entry.at}{why}"
            elif entry.what == "release.node" and "drained" in (entry.outcome or "").split(";")[0]:
                notes[entry.target] = f"left drained by a release of {mention(entry.who)} at {entry.at}"
            elif entry.what == "undrain" and entry.after is not None:
                notes[entry.target] = ""  # undrained since: an older drain is not the one in force
        return {k: v for k, v in notes.items() if v}

    # -- planning -------------------------------------------------------------------------------

    # -- operators and a running release ------------------------------------------------------------

    def _release_refusal(self, app: str, address: ServerAddress) -> str | None:
        """Why a manual drain/undrain/remove of `address` must wait: the release has it in hand right now
        (between its drain and its restore, or waiting for a decision about it)."""
        engine = self.releases.engine(app) if self.releases else None
        if engine is None or engine.state.status.finished:
            return None
        node = engine.state.nodes.get(address)
        if node is None or node.phase in (Phase.WAITING, Phase.DONE, Phase.SKIPPED, Phase.RESTORED_UNRELEASED):
            return None
        if node.phase is Phase.FAILED and not node.drained:
            return None
        return (
            f"{address} is being released right now ({node.label}) by {engine.plan.title}, started by "
            f"{mention(engine.plan.requester)}; wait for it, answer its question, or `/release abort {app}`"
        )

    async def _release_note(self, app: str, address: ServerAddress, drain: bool, force: bool = False) -> str | None:
        """What a person acting on `address` should know about a release of `app` (refuses while the
        release has the node in hand)."""
        refusal = self._release_refusal(app, address)
        if refusal:
            raise UserError(f"Refused: {refusal}. Nothing was changed.")
        engine = self.releases.engine(app) if self.releases else None
        if engine is None:
            holder = await self.releases.locks.holder(app) if self.releases else None
            if holder is None:
                return None
            if not drain and not force:
                # Another bot runs it: which node it has in hand is not known here, and putting a node it
                # stopped back into traffic would fail requests. Refused unless the person insists.
                raise UserError(
                    f"Refused: {held_by(holder, app)}, and this bot cannot see which node it has in hand. "
                    f"Wait for it to end, or `/undrain {address} {app} --force` if you know this node is not "
                    "being released (the probe is then skipped too). Nothing was changed."
                )
            return f"{held_by(holder, app)}; a node drained before its turn is skipped and left drained"
        node = engine.state.nodes.get(address)
        batches = engine.plan.batches
        if node is None:
            return f"a release of {app} is running; {address} is not part of it"
        where = next((i for i, b in enumerate(batches, 1) if address in b), 0)
        if node.phase is Phase.WAITING:
            then = "; drained now, the release skips it and leaves it drained" if drain else ""
            return f"a release of {app} is running; {address} is in batch {where} of {len(batches)}{then}"
        return f"a release of {app} is running; {address} was in batch {where} of {len(batches)} ({node.label})"

    def _nothing_to_do(self, request: Request) -> str:
        if isinstance(request, DrainRequest):
            return f"{request.address} is already drained everywhere it is listed; nothing to do."
        if isinstance(request, UndrainRequest):
            return f"{request.address} is already serving everywhere it is listed; nothing to do."
        return "Nothing to do."

    async def plan(self, request: Request, requester: str) -> ChangePlan | None:
        """Build the change from one read of Consul; None when there is nothing to change."""
        if isinstance(request, DrainRequest | UndrainRequest):
            return await self._plan_drain(request, requester)
        if isinstance(request, AddRequest):
            return await self._plan_add(request, requester)
        if isinstance(request, RemoveRequest):
            return await self._plan_remove(request, requester)
        raise UserError(f"{type(request).__name__} changes nothing")

    async def _plan_drain(self, request: DrainRequest | UndrainRequest, requester: str) -> ChangePlan | None:
        drain = isinstance(request, DrainRequest)
        address = request.address
        listed = [(app, up, up.find(address)) for app, up in await self._read_all(request.app)]
        found = [(app, up, entry) for app, up, entry in listed if entry is not None]
        if not found:
            if request.app:
                names = ", ".join(str(s.address) for s in listed[0][1].servers[:8]) or "none"
                raise UserError(f"no server {address} in {request.app} (its servers: {names}).")
            apps = ", ".join(sorted(self.apps)) or "none"
            raise UserError(f"{address} is not in any configured upstream (looked in: {apps}).")
        changes, warnings, empties = [], [], []
        for app, upstream, entry in found:
            assert entry is not None
            note = await self._release_note(app.name, address, drain, request.force)
            if note:
                warnings.append(note)
            if entry.drained == drain:
                warnings.append(f"{app.name}: already {'drained' if drain else 'serving'}")
                continue
            serving, total = serving_after(upstream, address, drain)
            if drain and serving == 0:
                empties.append(app.name)
            changes.append(KeyChange(app.name, app.upstream, address, entry, entry.with_down(drain), serving, total))
        if not changes:
            return None
        if empties and not request.force:
            which = ", ".join(empties)
            raise UserError(
                f"Refused: draining {address} would leave {which} with no serving server. "
                f"Undrain another server first, or use `/drain {address} --force` to take the whole "
                f"upstream out of traffic (asks twice)."
            )
        if empties:
            warnings.append(f"{', '.join(empties)} will have NO serving server: every request will fail")
        if not drain and request.force:
            warnings.append("--force: the health probe is skipped")
        return ChangePlan(
            action="drain" if drain else "undrain",
            address=address,
            requester=requester,
            changes=tuple(changes),
            force=request.force,
            warnings=tuple(warnings),
            needs_second_confirmation=bool(empties),
            probe_first=not drain and not request.force,
            reason=request.reason,
        )

    async def _plan_add(self, request: AddRequest, requester: str) -> ChangePlan:
        app = self.app(request.app)
        if app.networks and not any(
            ipaddress.IPv4Address(request.address.host) in ipaddress.IPv4Network(n) for n in app.networks
        ):
            # Refused before anything is sent to it: the bot is no port scanner for whoever can type.
            raise UserError(
                f"Refused: {request.address.host} is outside {app.name}'s networks ({', '.join(app.networks)}); "
                f"nothing was sent to it. An address inside `apps.{app.name}.networks` is accepted."
            )
        upstream = await self.store.read(app.upstream)
        existing = upstream.find(request.address)
        if existing is not None:
            state = "drained" if existing.drained else "serving"
            raise UserError(
                f"{request.address} is already in {app.name} ({state}, weight {existing.weight}); "
                f"nothing to add. Use /undrain to put it back into traffic."
            )
        serving, total = serving_after(upstream, request.address, False)
        change = KeyChange(
            app.name, app.upstream, request.address, None, new_entry_fields(request.weight), serving, total
        )
        warnings = () if app.health.url else (f"{app.name} has no health.url: it is added without a probe",)
        return ChangePlan(
            "add",
            request.address,
            requester,
            (change,),
            warnings=warnings,
            probe_first=app.health.url is not None,
            reason=request.reason,
        )

    async def _plan_remove(self, request: RemoveRequest, requester: str) -> ChangePlan:
        app = self.app(request.app)
        upstream = await self.store.read(app.upstream)
        entry = upstream.find(request.address)
        if entry is None:
            names = ", ".join(str(s.address) for s in upstream.servers[:8]) or "none"
            raise UserError(f"no server {request.address} in {app.name} (its servers: {names}).")
        if len(upstream.servers) == 1:
            raise UserError(
                f"Refused: {request.address} is the only server of {app.name}; nginx-upsync-module never "
                f"deletes the last peers of an upstream. Add the replacement first."
            )
        serving, total = serving_after(upstream, request.address, None)
        if serving == 0:
            raise UserError(
                f"Refused: removing {request.address} would leave {app.name} with no serving server. "
                f"Undrain or add another server first."
            )
        note = await self._release_note(app.name, request.address, True)
        change = KeyChange(app.name, app.upstream, request.address, entry, None, serving, total)
        wait = app.nginx.propagation + app.release.drain_wait
        steps = (
            f"it is drained first, then removed after {wait:g} s"
            if not entry.drained
            else "it is drained already: it is removed at once"
        )
        return ChangePlan(
            "remove",
            request.address,
            requester,
            (change,),
            warnings=(steps, *([note] if note else [])),
            reason=request.reason,
        )

    # -- applying -------------------------------------------------------------------------------

    async def _apply(self, plan: ChangePlan, actor: str, notifier: Notifier) -> Outcome:
        if plan.probe_first:
            failed = await self._probe_before_write(plan)
            if failed:
                await notifier.emit(Problem(failed))
                for change in plan.changes:
                    await self._record_change(notifier, plan, actor, ChangeResult(change, False, failed))
                return Outcome.REFUSED
        elif plan.action == "undrain":
            await notifier.emit(Notice(f"Health probe skipped (--force): {plan.address} is put back unprobed."))
        if plan.action == "undrain" and not plan.force:
            unprobed = [c.app for c in plan.changes if self.apps[c.app].health.url is None]
            if unprobed:
                await notifier.emit(Notice(f"No health.url for {', '.join(unprobed)}: undrained without a probe."))
        results: list[ChangeResult] = []
        for change in plan.changes:
            if results and not results[-1].ok and results[-1].detail.startswith(("unknown", "Consul")):
                # Consul failed under the previous upstream: stop, and say exactly what was and was not done.
                results.append(ChangeResult(change, False, "not attempted: stopped after the error above"))
                continue
            refusal = self._release_refusal(change.app, change.address)
            if refusal:
                results.append(ChangeResult(change, False, f"not written: {refusal}"))
                continue
            try:
                if plan.action == "remove":
                    results.append(await self._apply_remove(plan, change, notifier))
                else:
                    results.append(await self._apply_change(plan, change))
            except StoreError as error:
                results.append(ChangeResult(change, False, f"Consul: {error.message}; not changed"))
        for result in results:
            await self._record_change(notifier, plan, actor, result)
        event = ChangeApplied(plan, actor, tuple(results), self.clock.now())
        if plan.action == "drain" and self.watches is not None:
            for result in results:
                watch = self.watches.watch(result.change.app)
                if result.ok and watch is not None:
                    watch.record_drain(result.change.address, actor)
        await notifier.emit(event)
        return Outcome.DONE if event.ok else Outcome.FAILED

    async def _record_change(self, notifier: Notifier, plan: ChangePlan, actor: str, result: ChangeResult) -> None:
        change = result.change
        await self.record(
            notifier,
            change.app,
            plan.action,
            actor,
            str(change.address),
            before=change.before.fields if change.before is not None else None,
            after=change.after if result.ok else None,
            reason=plan.reason,
            force=plan.force,
            outcome=result.detail,
        )

    async def _probe_before_write(self, plan: ChangePlan) -> str | None:
        urls = sorted(
            {
                (url, self.apps[c.app].health.timeout)
                for c in plan.changes
                if (url := self.apps[c.app].health.url_for(plan.address.host, plan.address.port)) is not None
            }
        )
        for url, timeout in urls:
            result = await self.prober.probe(url, timeout)
            if not result.healthy:
                hint = (
                    f"`/undrain {plan.address} --force` skips the probe"
                    if plan.action == "undrain"
                    else "fix the server and try again"
                )
                done = "undrained" if plan.action == "undrain" else "added"
                return (
                    f"Not {done}: the probe of {without_credentials(url)} "
                    f"failed ({quoted(result.detail)}). Nothing was changed; {hint}."
                )
        return None

    async def _apply_change(self, plan: ChangePlan, change: KeyChange) -> ChangeResult:
        """The one write path: check-and-set, the guard re-checked at write time (a serving witness in the
        same transaction), and a lost answer read back. The state confirmed is the state written over."""

        def decide(upstream: Upstream, current: ServerEntry | None) -> dict[str, Any] | str | None:
            return self._still_valid(plan, change, upstream) or change.after

        keep_serving = plan.action in ("drain", "remove") and not plan.force
        result = await write_entry(self.store, change.upstream, change.address, decide, keep_serving)
        if result.written is Written.APPLIED:
            lost = f" {result.detail[len('done '):]}" if result.detail.startswith("done (") else ""
            return ChangeResult(change, True, _done_text(plan.action, change) + lost)
        if result.written is Written.REFUSED:
            detail = result.detail if result.detail.startswith("not") else f"not written: {result.detail}"
            return ChangeResult(change, False, detail)
        if result.written is Written.ALREADY:
            return ChangeResult(change, True, "nothing to change")
        return ChangeResult(change, False, result.detail)

    def _still_valid(self, plan: ChangePlan, change: KeyChange, upstream: Upstream) -> str | None:
        """Why the confirmed change may no longer be written, or None."""
        current = upstream.find(change.address)
        before = change.before.fields if change.before is not None else None
        now = current.fields if current is not None else None
        if (before, change.before and change.before.invalid_value) != (now, current and current.invalid_value):
            return (
                f"not written: {change.address} in {change.app} changed since you asked "
                f"({describe_difference(before, now)}); run the command again to see the current state"
            )
        if plan.action in ("drain", "remove") and not plan.force:
            serving, _ = serving_after(upstream, change.address, True if plan.action == "drain" else None)
            if serving == 0:
                return (
                    f"not written: since you asked, the other servers of {change.app} were drained; "
                    f"draining {change.address} now would leave none serving"
                )
        return None

    async def _apply_remove(self, plan: ChangePlan, change: KeyChange, notifier: Notifier) -> ChangeResult:
        assert change.before is not None
        if not change.before.drained:
            drain = replace(change, after=change.before.with_down(True))
            drained = await self._apply_change(replace(plan, action="drain"), drain)
            if not drained.ok:
                return ChangeResult(change, False, drained.detail)
            app = self.apps[change.app]
            wait = app.nginx.propagation + app.release.drain_wait
            await notifier.emit(
                Notice(
                    f"{change.address} drained in {change.app}; removing it in {wait:g} s, "
                    "once nginx has stopped routing to it."
                )
            )
            await self.clock.sleep(wait)
            change = replace(change, before=replace(change.before, fields=drain.after or {}, invalid_value=None))
        for _ in range(CAS_ATTEMPTS):
            upstream = await self.store.read(change.upstream)
            refusal = self._still_valid(plan, change, upstream)
            current = upstream.find(change.address)
            if refusal or current is None:
                return ChangeResult(change, False, refusal or "already removed by someone else")
            result = await delete_entry(self.store, change.upstream, change.address, current)
            if result.written is Written.APPLIED:
                return ChangeResult(change, True, _done_text("remove", change))
            if result.written is Written.UNKNOWN:
                return ChangeResult(change, False, result.detail)
        return ChangeResult(change, False, f"not removed: {change.address} kept changing ({CAS_ATTEMPTS} attempts)")


def _done_text(action: str, change: KeyChange) -> str:
    verb = {"drain": "drained", "undrain": "serving again", "add": "added", "remove": "removed"}[action]
    return f"{verb}; {change.impact.replace('will be', 'now')}"


def _listed(view: NginxView, key: str) -> str | None:
    if view.listed_down is None:
        return None
    if key not in view.listed_down:
        return "missing"
    return "drained" if view.listed_down[key] else "serving"


def _disagreement(status: ServerStatus) -> str | None:
    consul = "drained" if status.drained else "serving"
    if not status.drained and status.nginx_check == "down":
        return "Consul: serving, nginx check: down"
    if status.nginx_listed == "missing":
        return f"Consul: {consul}, not in nginx's upstream list"
    if status.nginx_listed is not None and status.nginx_listed != consul:
        return f"Consul: {consul}, nginx lists it {status.nginx_listed}"
    return None

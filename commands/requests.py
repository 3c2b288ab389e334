"""Typed requests: what a command line means once parsed."""

from __future__ import annotations

from dataclasses import dataclass

from commands.addresses import ServerAddress


@dataclass(frozen=True)
class HelpRequest:
    command: str  # "/upstream", "/drain", ... or "" for everything


@dataclass(frozen=True)
class StatusRequest:
    app: str
    page: int = 1


@dataclass(frozen=True)
class DrainRequest:
    address: ServerAddress
    app: str | None = None  # None: every configured app whose upstream lists the server
    force: bool = False
    reason: str | None = None  # --reason "...": recorded in the history, shown in the channel


@dataclass(frozen=True)
class UndrainRequest:
    address: ServerAddress
    app: str | None = None
    force: bool = False  # skip the health probe
    reason: str | None = None  # --reason "...": recorded in the history, shown in the channel


@dataclass(frozen=True)
class AddRequest:
    app: str
    address: ServerAddress
    weight: int = 1
    reason: str | None = None  # --reason "...": recorded in the history, shown in the channel


@dataclass(frozen=True)
class RemoveRequest:
    app: str
    address: ServerAddress
    reason: str | None = None  # --reason "...": recorded in the history, shown in the channel


@dataclass(frozen=True)
class ReleaseRequest:
    app: str
    batch: int = 1  # servers drained at once; `batch_percent` wins when set
    batch_percent: int | None = None
    canary: bool = False
    version: str | None = None
    dry_run: bool = False
    force: bool = False
    reason: str | None = None  # --reason "...": recorded in the history, shown in the channel


@dataclass(frozen=True)
class ReleaseStatusRequest:
    app: str


@dataclass(frozen=True)
class ReleaseAbortRequest:
    app: str
    reason: str | None = None  # --reason "...": recorded in the history, shown in the channel


@dataclass(frozen=True)
class ReleaseResumeRequest:
    """`/release resume <app> [--restore | --leave]`: take up a release whose bot died."""

    app: str
    mode: str = "resume"  # ResumeMode.value: resume | restore | leave
    reason: str | None = None  # --reason "...": recorded in the history, shown in the channel


@dataclass(frozen=True)
class WatchRequest:
    app: str
    on: bool
    reason: str | None = None  # --reason "...": recorded in the history, shown in the channel


@dataclass(frozen=True)
class AlertsRequest:
    app: str | None = None


@dataclass(frozen=True)
class HistoryRequest:
    app: str
    address: ServerAddress | None = None
    limit: int = 20


@dataclass(frozen=True)
class MarkRequest:
    """`/upstream ack|silence <app> [ip:port]`: an alert's Acknowledge or Silence 1 h, typed (the
    terminal has no buttons). No address: the app's own incident (the watch cannot see it)."""

    app: str
    address: ServerAddress | None
    what: str  # "acknowledge" | "silence"


Request = (
    HelpRequest
    | StatusRequest
    | DrainRequest
    | UndrainRequest
    | AddRequest
    | RemoveRequest
    | ReleaseRequest
    | ReleaseStatusRequest
    | ReleaseAbortRequest
    | ReleaseResumeRequest
    | WatchRequest
    | AlertsRequest
    | HistoryRequest
    | MarkRequest
)

# Requests that change Consul: they are planned, confirmed, then applied.
CHANGE_REQUESTS = (DrainRequest, UndrainRequest, AddRequest, RemoveRequest)

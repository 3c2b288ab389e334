"""Prometheus metrics of a running `serve` (GET /metrics in HTTP mode), in one registry of their own.

Names start `upstream_bot_`. What each says:
- `commands_total{command,outcome}`: slash commands by name and outcome (done, pending, refused,
  failed, usage: the text was not understood);
- `slack_ack_seconds`: from a Slack request's arrival to the bot's answer (Slack gives up at 3 s);
- `consul_call_seconds{outcome}` and `consul_errors_total{error}`: every Consul call, and why one failed;
- `releases_started_total{app}`, `releases_finished_total{app,outcome}`, `release_node_seconds{app,phase}`
  (each phase of a node's turn, and `total`);
- `watch_probes_total{app,result}` (healthy, failing, unknown), `watch_open_incidents{app}` (only the replica
  leading the watch reports it; the others have no value);
- `alerts_posted_total{kind}`: what the health watch got into the channel;
- `slack_api_errors_total{method,error}`: Slack calls that failed (`ratelimited` for a 429).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

REGISTRY = CollectorRegistry(auto_describe=True)
CONTENT_TYPE = CONTENT_TYPE_LATEST
_FAST = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 3.0)

COMMANDS = Counter("upstream_bot_commands", "Slash commands", ["command", "outcome"], registry=REGISTRY)
ACK_SECONDS = Histogram(
    "upstream_bot_slack_ack_seconds", "Slack request to the bot's answer", buckets=_FAST, registry=REGISTRY
)
CONSUL_SECONDS = Histogram(
    "upstream_bot_consul_call_seconds", "Consul calls", ["outcome"], buckets=_FAST, registry=REGISTRY
)
CONSUL_ERRORS = Counter("upstream_bot_consul_errors", "Consul calls that failed", ["error"], registry=REGISTRY)
RELEASES_STARTED = Counter("upstream_bot_releases_started", "Releases started", ["app"], registry=REGISTRY)
RELEASES_FINISHED = Counter(
    "upstream_bot_releases_finished", "Releases ended", ["app", "outcome"], registry=REGISTRY
)
NODE_SECONDS = Histogram(
    "upstream_bot_release_node_seconds",
    "A node's phases in a release (and its whole turn: phase=total)",
    ["app", "phase"],
    buckets=(5, 15, 30, 60, 120, 300, 600, 1800, 3600),
    registry=REGISTRY,
)
PROBES = Counter("upstream_bot_watch_probes", "Health watch probes", ["app", "result"], registry=REGISTRY)
OPEN_INCIDENTS = Gauge("upstream_bot_watch_open_incidents", "Open incidents", ["app"], registry=REGISTRY)
ALERTS_POSTED = Counter("upstream_bot_alerts_posted", "Health watch posts", ["kind"], registry=REGISTRY)
SLACK_ERRORS = Counter(
    "upstream_bot_slack_api_errors", "Slack calls that failed", ["method", "error"], registry=REGISTRY
)


def exposition() -> bytes:
    return generate_latest(REGISTRY)

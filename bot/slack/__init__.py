"""The Slack front end.

- Wiring: `app.py` (client, Bolt app, which handler answers what), `serve.py` (Socket Mode or HTTP),
  `http_server.py` (`POST /slack/events`, `GET /healthz`).
- Shared state and speaking to Slack: `front.py`; the one guard for every Slack call: `calls.py`.
- Handlers, thin (acknowledge, parse, call the command service): `slash.py` (slash commands, status
  pages), `presses.py` (Confirm / Start / Cancel), `approvals.py` (Approve / Reject and its modal),
  `steering.py` (a running release's decisions, Abort), `alert_buttons.py` (Drain / Silence / Acknowledge).
- Events to messages: `notifier.py`; what it keeps posting and editing: `release_posts.py` (with
  `progress.py`), `alert_posts.py`; pending confirmations: `pending.py`; user groups: `directory.py`.
- Rendering: `mrkdwn.py` (escaping), `blocks.py` (Block Kit within its limits), and one module per kind
  of message: `status_messages.py`, `change_messages.py`, `history_messages.py`, `release_messages.py`,
  `alert_messages.py`.
"""

"""Correctly signed but malformed requests: the bot stays up, answers where the payload says how, logs
each once, and leaves no background task dying unseen."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

import httpx

from tests.helpers import action_body, command_body, sign
from tests.slack_bot import running_bot

ACTIONS = (
    "status_page", "confirm", "cancel", "release_start", "release_approve", "release_reject", "release_decision",
    "release_abort", "release_resume", "watch_drain", "watch_silence", "watch_ack",
)  # fmt: skip


def without(body: str, field: str) -> str:
    return urlencode([(k, v) for k, v in parse_qsl(body) if k != field])


def odd_press(action: str, value: object, response_url: str) -> str:
    payload = json.loads(dict(parse_qsl(action_body(action, "x", response_url=response_url)))["payload"])
    payload["actions"][0]["value"] = value
    return urlencode({"payload": json.dumps(payload)})


def test_malformed_requests_leave_the_bot_up_and_are_answered_where_possible(tmp_path: Path) -> None:
    rng = random.Random(12)
    with running_bot(
        tmp_path, "slack:\n  channel: C0DEPLOY\naccess:\n  operators: [U1ALICE]\napps:\n  app: {}\n"
    ) as bot:
        answer_to = f"{bot.slack_url}/response/malformed"
        # A command without its channel: answered through its response_url.
        assert (
            bot.post(without(command_body("/upstream", "status app", response_url=answer_to), "channel_id")).status_code
            == 200
        )
        bot.said(lambda c: "could not be handled" in c.text, method="response_url")
        # Button values of the wrong type, for every button the bot has.
        odd = [5, [1, 2], {"app": 7}, "not json", '{"key": 3}', None, "é" * 3000, '{"app": "app", "incident": 9}']
        for i in range(400):  # bounded: 400 requests of every sort
            kind = i % 4
            if kind == 0:
                body = odd_press(rng.choice(ACTIONS), rng.choice(odd), answer_to)
            elif kind == 1:
                body = urlencode({"payload": rng.choice(["{", "[]", "null", '{"type": "block_actions"}', "5"])})
            elif kind == 2:
                text = "".join(rng.choice("статусアプリ🙂 \u202e/") for _ in range(rng.randint(1, 4000)))
                body = command_body(rng.choice(["/upstream", "/drain", "/release"]), text, response_url=answer_to)
            else:
                body = without(
                    command_body("/drain", "10.0.0.1:80", response_url=answer_to),
                    rng.choice(["user_id", "command", "channel_id"]),
                )
            assert bot.post(body).status_code in (200, 400, 404), body[:200]
        # Still itself: a good command is answered as always.
        bot.command("/upstream", "status app")
        bot.said(lambda c: "app" in c.text and "serving" in c.text, method="chat.postEphemeral")
        assert httpx.get(f"{bot.url}/healthz").json() == {"ok": True}
        log = (tmp_path / "bot.log").read_text()
    # Each logged once, as not handled (with its traceback: a bug would look the same); none left unseen.
    assert "Task exception was never retrieved" not in log and "background work failed" not in log
    assert "Slack request not handled" in log


def test_an_unreadable_body_is_refused_for_its_signature_before_it_is_read(tmp_path: Path) -> None:
    """Only a request Slack signed earns "malformed": anyone else learns nothing of how bodies are read."""
    with running_bot(tmp_path, "apps:\n  app: {}\n") as bot:
        body = urlencode({"payload": "5"})
        assert bot.post(body, headers={}).status_code == 401  # unsigned
        assert bot.post(body, headers=sign(body, secret="not-the-secret")).status_code == 401
        now = str(int(time.time()))
        for odd in (
            {"X-Slack-Request-Timestamp": "soon", "X-Slack-Signature": "v0=" + "0" * 64},
            {"X-Slack-Request-Timestamp": "١٢", "X-Slack-Signature": "v0=" + "0" * 64},  # digits, not ASCII
            {"X-Slack-Request-Timestamp": now, "X-Slack-Signature": "v0=é"},  # slack_sdk raised TypeError: a 500
            {"X-Slack-Request-Timestamp": now, "X-Slack-Signature": "v0=" + "0" * 63},
            {"X-Slack-Request-Timestamp": "9" * 400, "X-Slack-Signature": "v0=" + "0" * 64},  # overflowed: a 500
            {"X-Slack-Request-Timestamp": "9" * 5000, "X-Slack-Signature": "v0=" + "0" * 64},
        ):
            headers = {k: v.encode() for k, v in odd.items()}  # UTF-8 bytes on the wire
            assert bot.post(body, headers=headers).status_code == 401, odd
        # A compressed body (gzip that is not): unsigned 401; with signature headers 415, never read (aiohttp
        # would decompress it first, and logged the failure as an unhandled exception).
        garbage = "not gzip at all"
        gzip_headers = {"Content-Encoding": "gzip"}
        assert bot.post(garbage, headers=gzip_headers).status_code == 401
        fake = {"X-Slack-Request-Timestamp": now, "X-Slack-Signature": "v0=" + "ab" * 32}
        assert bot.post(garbage, headers={**fake, **gzip_headers}).status_code == 415
        assert bot.post(garbage, headers={**sign(garbage), **gzip_headers}).status_code == 415
        signed = bot.post(body)  # the last request: every one before it was taken and answered
        assert signed.status_code == 400 and signed.json() == {"ok": False, "error": "malformed request"}
        log = (tmp_path / "bot.log").read_text()
    # Nothing an outsider sends becomes an ERROR with a traceback in the bot's log.
    assert "Traceback" not in log and " ERROR " not in log, log

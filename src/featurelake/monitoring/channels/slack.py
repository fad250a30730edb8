"""Slack channel: incoming-webhook JSON, URL read from an env var only, retried with backoff.

The webhook URL is a secret: it is read from the environment variable the config names and appears in no
message, log line or exception this module produces.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request

from featurelake.errors import ConfigError
from featurelake.monitoring.channels import AlertEvent, Channel, ChannelOptions, DeliveryError

_EMOJI = {
    "info": ":information_source:",
    "warning": ":warning:",
    "error": ":red_circle:",
    "critical": ":rotating_light:",
}


class SlackOptions(ChannelOptions):
    webhook_url_env: str
    """Name of the env var holding the incoming-webhook URL (never the URL itself)."""
    timeout_seconds: float = 5.0
    """Per attempt."""
    retries: int = 3
    """Attempts after the first one, on timeouts, connection errors, 429 and 5xx."""
    backoff_seconds: float = 1.0
    """Wait before the first retry; doubled for each next one."""


def payload(event: AlertEvent) -> dict[str, object]:
    """The incoming-webhook body of one event: ``text`` (fallback) and a section block."""
    icon = ":white_check_mark:" if event.status == "resolved" else _EMOJI.get(event.severity, "")
    text = f"{icon} {event.headline()}".strip()
    labels = "  ".join(f"`{k}={v}`" for k, v in sorted(event.labels.items()))
    return {
        "text": text,
        "blocks": [
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": f"{icon} *{event.alert}* ({event.severity}, {event.status})\n{event.summary}",
                },
            },
            {
                "type": "context",
                "elements": [{"type": "mrkdwn", "text": f"project `{event.project}`  {labels}"}],
            },
        ],
    }


class SlackChannel(Channel):
    """Production alerts to a Slack incoming webhook."""

    Options = SlackOptions

    def __init__(self, options: ChannelOptions, project: object, where: str) -> None:
        super().__init__(options, project, where)  # type: ignore[arg-type]
        assert isinstance(options, SlackOptions)
        self.opts = options
        url = os.environ.get(options.webhook_url_env, "").strip()
        if not url:
            raise ConfigError(
                f"{where} (slack): env var {options.webhook_url_env} is not set: export it with the Slack "
                "incoming-webhook URL (the URL never goes in featurelake.yaml)"
            )
        if not url.startswith(("https://", "http://")):
            raise ConfigError(
                f"{where} (slack): {options.webhook_url_env} does not hold an http(s) URL: export it with the "
                "Slack incoming-webhook URL (https://hooks.slack.com/services/...)"
            )
        self._url = url
        #: Attempts made by the last send (for tests and the summary).
        self.attempts = 0

    def _post(self, body: bytes) -> None:
        req = urllib.request.Request(
            self._url, data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=self.opts.timeout_seconds) as resp:
            resp.read()

    def _send_one(self, event: AlertEvent) -> None:
        body = json.dumps(payload(event)).encode()
        delay = self.opts.backoff_seconds
        problem = ""
        for attempt in range(self.opts.retries + 1):
            self.attempts += 1
            try:
                self._post(body)
                return
            except urllib.error.HTTPError as exc:
                problem = f"HTTP {exc.code}"
                exc.close()
                if exc.code != 429 and exc.code < 500:
                    break  # the request itself is wrong: retrying cannot help
            except (urllib.error.URLError, TimeoutError, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                problem = "timed out" if isinstance(reason, TimeoutError) else f"{type(reason).__name__}"
            if attempt < self.opts.retries:
                time.sleep(delay)
                delay *= 2
        raise DeliveryError(
            f"slack webhook (${self.opts.webhook_url_env}) failed after {attempt + 1} attempt(s): {problem}",
            [event],
        )

    def send(self, events: list[AlertEvent]) -> None:
        self.attempts = 0
        failed: list[AlertEvent] = []
        messages: list[str] = []
        for event in events:
            try:
                self._send_one(event)
            except DeliveryError as exc:
                failed.extend(exc.events)
                messages.append(f"{event.alert}: {exc}")
        if failed:
            raise DeliveryError("; ".join(messages), failed)

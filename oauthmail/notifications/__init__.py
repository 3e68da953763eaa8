"""Telling people what happened: a webhook and an admin mail, besides ``notify_command``.

Events (:mod:`.events`): an account's state changed (``AccountHealth.listen``),
and a message failed for good (from the message log's entries, through
:class:`~oauthmail.notifications.hub.NotifyingRecorder`). Each event goes to
every configured notifier: :class:`~oauthmail.notifications.webhook.WebhookNotifier`
(a JSON POST, HMAC-signed, retried with a growing, capped, jittered backoff)
and :class:`~oauthmail.notifications.mail.MailNotifier` (a short mail queued
through one of the accounts).

Rules a reader must not break:

- A notifier never holds up what it reports on: events are queued in memory
  (bounded: the oldest are dropped with a warning) and delivered one at a time.
- No token, secret or message body is ever in a notification.
- The admin mail never reports on itself: a notification mail that fails does
  not cause another one.
"""

"""Meta webhooks: signature check, parsing into feedback events, ingestion, HTTP receiver.

- ``tiergate.webhooks.ingest``: ``ingest(service, body, signature, secret,
  now_ms)`` verifies, parses and applies one body (the gRPC ``IngestWebhook``
  RPC and the HTTP receiver both use it); ``SignatureError`` / ``WebhookError``.
- ``tiergate.webhooks.parse``: ``parse(body)`` → events and ignored parts.
- ``tiergate.webhooks.fields``: one reader per Meta webhook field (``messages``,
  ``account_update`` …), each change's value → events.
- ``tiergate.webhooks.reading``: typed JSON readers naming the path of a bad value.
- ``tiergate.webhooks.signature``: ``X-Hub-Signature-256`` (``verify``, ``sign``).
- ``tiergate.webhooks.http``: ``WebhookReceiver``, the optional HTTP endpoint of
  ``tiergate serve --webhook-listen``.

Submodules are imported by name (``from tiergate.webhooks import ingest``
gives the module), so this package re-exports nothing.
"""

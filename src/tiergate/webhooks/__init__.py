"""Meta webhooks: signature check, parsing into feedback events, ingestion."""

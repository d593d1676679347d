"""The policy layer: Meta's rules (profiles), decisions, feedback and state reports."""

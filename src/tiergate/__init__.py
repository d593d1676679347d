"""tiergate: admission control for WhatsApp Business senders."""

__version__ = "0.1.0"

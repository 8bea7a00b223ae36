"""The ``smtp`` transport: relay through a smarthost with aiosmtplib."""

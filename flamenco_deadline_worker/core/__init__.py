"""The worker's core: its vocabulary (model), the pull loop, backoff and clock.

Nothing here imports a backend (aiohttp, boto3) or an operations module (state file, systemd,
records, credentials file): those are handed in at the composition root.
"""

"""Adaptors built on ``flamenco_deadline_worker.adaptor``; each runs as ``python -m <package> ...``."""

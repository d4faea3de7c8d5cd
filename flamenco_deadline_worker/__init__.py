"""A pull-model render-farm worker agent for Flamenco 3 Managers and AWS Deadline Cloud."""

__version__ = "0.1.0"

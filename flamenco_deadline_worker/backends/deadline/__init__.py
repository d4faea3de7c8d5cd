"""AWS Deadline Cloud backend: the worker API protocol, OpenJD sessions, CloudWatch session logs.

Imported only when the Deadline backend is chosen (extra ``deadline``: boto3, openjd-model,
openjd-sessions); compose.run_deadline puts it together.
"""

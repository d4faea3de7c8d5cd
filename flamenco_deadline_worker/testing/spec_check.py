"""Checks requests to the local manager, and its answers, against the Flamenco OpenAPI spec.

openapi-core is a test-only dependency: the manager imports this module only when validation is on.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from aiohttp import web
from openapi_core import OpenAPI
from openapi_core.contrib.aiohttp import AIOHTTPOpenAPIWebRequest, AIOHTTPOpenAPIWebResponse
from openapi_core.templating.responses.exceptions import ResponseNotFound

_MAX_PROBLEM_CHARS = 300


class SpecChecker:
    """Turns openapi-core's findings into short readable strings, one per problem."""

    def __init__(self, spec_path: Path) -> None:
        self.spec_path = spec_path
        self._openapi = OpenAPI.from_file_path(str(spec_path))

    def check_request(self, request: web.Request, body: bytes) -> list[str]:
        wrapped = AIOHTTPOpenAPIWebRequest(request, body=body)
        return [p for error in self._openapi.iter_request_errors(wrapped) for p in _describe(error)]

    def check_response(self, request: web.Request, body: bytes, response: web.StreamResponse) -> list[str]:
        if not isinstance(response, web.Response):
            return [f"answer {response.status} is a streamed response, which cannot be checked"]
        wrapped_request = AIOHTTPOpenAPIWebRequest(request, body=body)
        errors = self._openapi.iter_response_errors(wrapped_request, AIOHTTPOpenAPIWebResponse(response))
        problems: list[str] = []
        for error in errors:
            # The security scheme implies 401 answers, but scheduleTask lists no 401 and no default.
            if isinstance(error, ResponseNotFound) and response.status == 401:
                continue
            # Note: 409 answers have no content in the spec while the manager sends Error JSON, like the
            # real one; openapi-core does not check bodies of answers without content, so they pass.
            problems.extend(_describe(error))
        return problems


def _describe(error: BaseException) -> Iterable[str]:
    """One string per schema error when openapi-core has them, else the error's own message."""
    cause = error.__cause__
    schema_errors = getattr(cause, "schema_errors", None) if cause is not None else None
    if schema_errors:
        for schema_error in schema_errors:
            where = ".".join(str(part) for part in schema_error.absolute_path) or "body"
            yield _short(f"{type(error).__name__}: {where}: {schema_error.message}")
        return
    message = str(cause) if cause is not None and str(cause) else str(error)
    yield _short(f"{type(error).__name__}: {message}")


def _short(text: str) -> str:
    return text if len(text) <= _MAX_PROBLEM_CHARS else text[: _MAX_PROBLEM_CHARS - 3] + "..."

"""The bus's error codes as HTTP statuses: one table, used by every HTTP door.

The body always carries the bus's own ``{"error": {"code", "message",
"data"}}``, so a client that knows the bus's codes never needs this table;
it is what lets ``curl --fail`` and HTTP libraries do the right thing.
"""

from __future__ import annotations

from http import HTTPStatus

from protocol import ErrorCode

HTTP_STATUS: dict[ErrorCode, HTTPStatus] = {
    ErrorCode.PARSE_ERROR: HTTPStatus.BAD_REQUEST,
    ErrorCode.INVALID_REQUEST: HTTPStatus.BAD_REQUEST,
    ErrorCode.METHOD_NOT_FOUND: HTTPStatus.NOT_FOUND,
    ErrorCode.INVALID_PARAMS: HTTPStatus.UNPROCESSABLE_ENTITY,
    ErrorCode.INTERNAL_ERROR: HTTPStatus.INTERNAL_SERVER_ERROR,
    ErrorCode.TARGET_OFFLINE: HTTPStatus.SERVICE_UNAVAILABLE,
    ErrorCode.TIMEOUT: HTTPStatus.GATEWAY_TIMEOUT,
    ErrorCode.FORBIDDEN: HTTPStatus.FORBIDDEN,
    ErrorCode.OVERLOADED: HTTPStatus.TOO_MANY_REQUESTS,
    ErrorCode.CANCELLED: HTTPStatus.CONFLICT,
    ErrorCode.UNAUTHENTICATED: HTTPStatus.UNAUTHORIZED,
    ErrorCode.UNSUPPORTED_VERSION: HTTPStatus.BAD_REQUEST,
    ErrorCode.SHUTTING_DOWN: HTTPStatus.SERVICE_UNAVAILABLE,
    ErrorCode.CONNECTION_LOST: HTTPStatus.BAD_GATEWAY,
}


def http_status(code: int) -> HTTPStatus:
    """The HTTP status for a bus error code; a service's own codes are 500s."""
    try:
        return HTTP_STATUS[ErrorCode(code)]
    except (ValueError, KeyError):
        return HTTPStatus.INTERNAL_SERVER_ERROR

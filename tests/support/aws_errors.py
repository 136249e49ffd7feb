"""The AWS error front now lives in ``sandbox.aws_front`` (the ``aws_secrets_manager`` fixture adapter routes its
connection through it); re-exported here for the tests that import it from their support package."""

from __future__ import annotations

from sandbox.aws_front import (
    ACCESS_DENIED,
    EXPIRED_TOKEN,
    INTERNAL_ERROR,
    INVALID_SIGNATURE,
    THROTTLING,
    UNRECOGNIZED_CLIENT,
    AwsError,
    AwsErrorFront,
    FrontRule,
)

__all__ = [
    "ACCESS_DENIED",
    "EXPIRED_TOKEN",
    "INTERNAL_ERROR",
    "INVALID_SIGNATURE",
    "THROTTLING",
    "UNRECOGNIZED_CLIENT",
    "AwsError",
    "AwsErrorFront",
    "FrontRule",
]

"""Errors a user sees. Each message says what was wrong and what would be right."""


class UserError(Exception):
    """Bad input or a refusal: nothing was changed, the message says why."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UsageError(UserError):
    """The command text could not be understood."""


class Refused(UserError):
    """The command was understood but a guard stops it (for example: last serving server)."""


class StoreError(Exception):
    """The upstream store (Consul) could not do what was asked."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class StoreUnavailable(StoreError):
    """No configured address answered (connection refused, timeout, no cluster leader)."""


class StoreForbidden(StoreError):
    """The store refused the ACL token (HTTP 403)."""


class StoreRejected(StoreError):
    """Consul answered, and refused the request with a 4xx other than 403 (400, 404, 413, 429...).

    Not a transport problem: it is not retried on another address, and the status says what it was."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class StoreNotFound(StoreRejected):
    """404: the thing asked for does not exist (for example a lock's session that is gone)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, 404)


class StoreUncertain(StoreError):
    """A write was sent but its answer was lost (timeout after sending, connection dropped, a 5xx
    other than "No cluster leader"): it may or may not have been applied. Never retried blindly;
    the writer reads the key back and says what it holds."""

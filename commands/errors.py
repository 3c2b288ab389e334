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

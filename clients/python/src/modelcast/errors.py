"""Exceptions: every refusal carries what the server said."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One problem of a refused publish: `field` is a JSON path such as `data.progress_percent`;
    `index` is the element of an array publish it belongs to."""

    field: str
    message: str
    index: int | None = None


class ModelcastError(Exception):
    """Base class of the package's errors."""


class PublishError(ModelcastError):
    """The server refused a publish. `status` is the HTTP status, `code` the server's error
    code (`invalid_message`, `unauthorized`, `unavailable`, …), `problems` every field problem
    of a 400 (all of them, not only the first)."""

    def __init__(self, status: int | None, code: str, message: str, problems: list[Problem] | None = None):
        self.status = status
        self.code = code
        self.message = message
        self.problems = problems or []
        detail = "; ".join(f"{'' if p.index is None else f'[{p.index}] '}{p.field}: {p.message}" for p in self.problems)
        head = f"{code}: {message}" if status is None else f"{status} {code}: {message}"
        super().__init__(head + (f" ({detail})" if detail else ""))


class UnavailableError(PublishError):
    """The server (or its cluster store) could not take the publish now, and retries ran out.
    `status` is `None` when the server could not be reached at all (`connection_failed`)."""


class MappingError(ModelcastError, ValueError):
    """A notifier argument cannot be turned into a message (unknown keys, missing values):
    raised before anything is sent, never a silent drop."""


class PushError(ModelcastError):
    """The server refused a push registration call (`modelcast.push`): `status` is the HTTP
    status (`None`: the server could not be reached, `connection_failed`), `code` the server's
    error code (`push_off`, `unauthorized`, `invalid_registration`, `too_many_devices`,
    `not_found`), `problems` the fields a 400 names."""

    def __init__(self, status: int | None, code: str, message: str, problems: list[Problem] | None = None):
        self.status = status
        self.code = code
        self.message = message
        self.problems = problems or []
        detail = "; ".join(f"{p.field}: {p.message}" for p in self.problems if p.field)
        head = f"{code}: {message}" if status is None else f"{status} {code}: {message}"
        super().__init__(head + (f" ({detail})" if detail else ""))

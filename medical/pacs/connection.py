"""How to reach a PACS over HTTP: the URL, credentials, TLS, timeouts and the retry policy.

Credentials never come from the command line (they would sit in shell history and ``ps``): a
basic-auth user and password or a bearer token are read from the environment
(``SCALPEL_PACS_USER`` + ``SCALPEL_PACS_PASSWORD``, or ``SCALPEL_PACS_TOKEN``) or from a JSON
file (``{"username": ..., "password": ...}`` or ``{"token": ...}``). Their ``repr`` shows no
secret, so neither logs nor reports can carry one. TLS certificates are verified unless told
otherwise; a private CA is given as a PEM bundle.

``dicomweb-client`` retries on HTTP status codes only; a connection dropped half way raises at
once. :func:`with_retries` retries both, with exponential back-off (and ``Retry-After``).
"""

from __future__ import annotations

import json
import logging
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from scalpel.medical.pacs.errors import PacsAuthError, PacsError, PacsNotFoundError

log = logging.getLogger("scalpel.medical.pacs")
T = TypeVar("T")

USER_ENV, PASSWORD_ENV, TOKEN_ENV = "SCALPEL_PACS_USER", "SCALPEL_PACS_PASSWORD", "SCALPEL_PACS_TOKEN"
#: Worth another try: the server was busy or failing for a moment (PS3.18 8.6.1).
RETRIABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class PacsAuth:
    """Basic (username + password) or bearer (token) credentials; the repr hides them."""

    username: str = field(default="", repr=False)
    password: str = field(default="", repr=False)
    token: str = field(default="", repr=False)

    def __repr__(self) -> str:
        return f"PacsAuth({self.kind()}, secret withheld)"

    def kind(self) -> str:
        return "bearer" if self.token else "basic" if self.username else "none"

    @classmethod
    def from_environment(cls, env: dict[str, str] | None = None) -> PacsAuth | None:
        env = os.environ if env is None else env
        if env.get(TOKEN_ENV):
            return cls(token=env[TOKEN_ENV].strip())
        if env.get(USER_ENV):
            if not env.get(PASSWORD_ENV):
                raise PacsAuthError(f"{USER_ENV} is set but {PASSWORD_ENV} is not; set both (or {TOKEN_ENV} for a bearer token)")
            return cls(username=env[USER_ENV], password=env[PASSWORD_ENV])
        return None

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> PacsAuth:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as err:
            raise PacsAuthError(f"credentials file {path} cannot be read ({err.strerror}); give a readable JSON file") from err
        except ValueError as err:  # never quote the content: it holds the secret
            raise PacsAuthError(f"credentials file {path} is not JSON; write {{\"username\": ..., \"password\": ...}} "
                                "or {\"token\": ...}") from err
        if not isinstance(data, dict) or not (data.get("token") or (data.get("username") and data.get("password"))):
            raise PacsAuthError(f"credentials file {path} holds neither a token nor a username and password; write "
                                "{\"username\": ..., \"password\": ...} or {\"token\": ...}")
        if os.name == "posix" and path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("credentials file %s is readable by other users; run `chmod 600 %s`", path, path)
        return cls(username=str(data.get("username") or ""), password=str(data.get("password") or ""),
                   token=str(data.get("token") or ""))


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry a request that failed for a reason that may pass."""

    attempts: int = 6
    first_delay_s: float = 0.2
    max_delay_s: float = 10.0

    def delay(self, attempt: int, retry_after: str | None = None) -> float:
        if retry_after and retry_after.strip().isdigit():
            return min(float(retry_after), self.max_delay_s)
        return min(self.first_delay_s * 2 ** attempt, self.max_delay_s)


@dataclass(frozen=True)
class PacsConnection:
    """Where the DICOMweb service is and how to talk to it.

    ``url`` is the DICOMweb root (Orthanc: ``http://host:8042/dicom-web``).
    """

    url: str
    auth: PacsAuth | None = None
    ca_bundle: str | None = None
    verify_tls: bool = True
    timeout_s: float = 30.0
    retry: RetryPolicy = RetryPolicy()

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise PacsError(f"PACS URL {self.url!r} must start with http:// or https:// (the DICOMweb root, "
                            "e.g. http://host:8042/dicom-web); for DIMSE give AE@host:port")
        if self.ca_bundle and not Path(self.ca_bundle).is_file():
            raise PacsError(f"CA bundle {self.ca_bundle} does not exist; give the PEM file of your hospital's CA")

    def session(self, on_response: Callable | None = None):
        """A ``requests.Session`` with the credentials and TLS settings (one per thread)."""
        import requests

        session = requests.Session()
        session.verify = self.ca_bundle or self.verify_tls
        if self.auth is not None and self.auth.token:
            session.headers["Authorization"] = f"Bearer {self.auth.token}"
        elif self.auth is not None and self.auth.username:
            session.auth = (self.auth.username, self.auth.password)
        if on_response is not None:
            session.hooks["response"].append(on_response)
        return session


def with_retries(call: Callable[[], T], what: str, policy: RetryPolicy) -> T:
    """``call()``, retried on dropped connections, timeouts and 408/429/5xx answers.

    Raises:
        PacsAuthError: 401/403 (never retried). PacsNotFoundError: 404.
        PacsError: another 4xx, or still failing after ``policy.attempts`` tries.
    """
    import requests
    from urllib3.exceptions import HTTPError as Urllib3Error

    last = ""
    for attempt in range(policy.attempts):
        retry_after = None
        try:
            return call()
        except requests.exceptions.SSLError as err:
            raise PacsError(f"{what}: the server's TLS certificate could not be verified ({_short(err)}); give the "
                            "hospital's CA certificate with --ca-bundle") from err
        except requests.HTTPError as err:
            status = err.response.status_code if err.response is not None else 0
            if status in (401, 403):
                raise PacsAuthError(f"{what}: the PACS refused the credentials (HTTP {status}); check {USER_ENV}/"
                                    f"{PASSWORD_ENV}, {TOKEN_ENV} or the --auth-file, and that this user may read/write") from err
            if status == 404:
                raise PacsNotFoundError(f"{what}: not found on the PACS (HTTP 404); check the UIDs and the URL "
                                        "(the DICOMweb root, e.g. http://host:8042/dicom-web)") from err
            if status not in RETRIABLE_STATUS:
                raise PacsError(f"{what}: the PACS answered HTTP {status}; check the query and the URL") from err
            retry_after = err.response.headers.get("Retry-After") if err.response is not None else None
            last = f"HTTP {status}"
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError, Urllib3Error) as err:
            last = _short(err)
        if attempt + 1 < policy.attempts:
            delay = policy.delay(attempt, retry_after)
            log.info("%s failed (%s); retry %d/%d in %.1f s", what, last, attempt + 1, policy.attempts - 1, delay)
            time.sleep(delay)
    raise PacsError(f"{what}: still failing after {policy.attempts} attempts ({last}); check that the PACS is up and "
                    "reachable, then run the same command again: what is on disk is kept and the pull resumes")


def _short(err: Exception) -> str:
    return f"{type(err).__name__}: {str(err)[:160]}"

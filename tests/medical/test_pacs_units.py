"""PACS connection pieces without a server: credentials, queries, the retry policy."""

from __future__ import annotations

import json

import pytest
import requests

from scalpel.core.errors import ConfigError
from scalpel.medical.pacs.connection import PacsAuth, PacsConnection, RetryPolicy, with_retries
from scalpel.medical.pacs.errors import PacsAuthError, PacsError, PacsNotFoundError
from scalpel.medical.pacs.query import PacsQuery

NO_WAIT = RetryPolicy(attempts=3, first_delay_s=0.0, max_delay_s=0.0)


def test_credentials_come_from_the_environment_and_never_show():
    assert PacsAuth.from_environment({}) is None
    token = PacsAuth.from_environment({"SCALPEL_PACS_TOKEN": "tok-123", "SCALPEL_PACS_USER": "u"})
    assert token.kind() == "bearer" and "tok-123" not in repr(token)
    basic = PacsAuth.from_environment({"SCALPEL_PACS_USER": "u", "SCALPEL_PACS_PASSWORD": "pw-456"})
    assert basic.kind() == "basic" and "pw-456" not in repr(basic) and "pw-456" not in str([basic])
    with pytest.raises(PacsAuthError, match="SCALPEL_PACS_PASSWORD is not"):
        PacsAuth.from_environment({"SCALPEL_PACS_USER": "u"})


def test_a_credentials_file_is_checked_without_quoting_it(tmp_path):
    path = tmp_path / "auth.json"
    path.write_text("password=hunter2")
    with pytest.raises(PacsAuthError, match="is not JSON") as err:
        PacsAuth.from_file(path)
    assert "hunter2" not in str(err.value)
    path.write_text(json.dumps({"username": "u"}))
    with pytest.raises(PacsAuthError, match="neither a token nor a username and password"):
        PacsAuth.from_file(path)
    path.write_text(json.dumps({"token": "abc"}))
    session = PacsConnection("https://pacs.example/dicom-web", auth=PacsAuth.from_file(path)).session()
    assert session.headers["Authorization"] == "Bearer abc" and session.verify is True


def test_tls_and_url_settings_are_checked(tmp_path):
    with pytest.raises(PacsError, match="CA bundle"):
        PacsConnection("https://pacs.example/dicom-web", ca_bundle=str(tmp_path / "missing.pem"))
    with pytest.raises(PacsError, match="must start with http"):
        PacsConnection("pacs.example:8042")
    bundle = tmp_path / "ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    assert PacsConnection("https://p/dicom-web", ca_bundle=str(bundle)).session().verify == str(bundle)


def test_a_query_is_validated_all_at_once_and_becomes_filters():
    with pytest.raises(ConfigError) as err:
        PacsQuery(study_uid="1.2.abc", date_from="2024-01-01", date_to="20230101")
    assert len(err.value.problems) == 2 and "not a DICOM UID" in str(err.value)
    with pytest.raises(ConfigError, match="is after"):
        PacsQuery(date_from="20240102", date_to="20240101")
    with pytest.raises(ConfigError, match="whole PACS"):
        PacsQuery()
    assert PacsQuery(patient_id="P", date_from="20200101", date_to="20201231").filters() == \
        {"PatientID": "P", "StudyDate": "20200101-20201231"}


def _http_error(status: int, retry_after: str | None = None) -> requests.HTTPError:
    response = requests.Response()
    response.status_code = status
    if retry_after:
        response.headers["Retry-After"] = retry_after
    return requests.HTTPError(response=response)


def test_retries_cover_dropped_connections_and_busy_answers_but_not_refusals():
    failures = [requests.ConnectionError("reset"), requests.exceptions.ChunkedEncodingError("cut"), _http_error(429)]
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) <= len(failures):
            raise failures[len(calls) - 1]
        return "ok"

    assert with_retries(flaky, "test", RetryPolicy(attempts=4, first_delay_s=0.0)) == "ok" and len(calls) == 4
    with pytest.raises(PacsError, match="still failing after 3 attempts"):
        with_retries(lambda: (_ for _ in ()).throw(_http_error(503)), "test", NO_WAIT)
    with pytest.raises(PacsAuthError):
        with_retries(lambda: (_ for _ in ()).throw(_http_error(401)), "test", NO_WAIT)
    with pytest.raises(PacsNotFoundError):
        with_retries(lambda: (_ for _ in ()).throw(_http_error(404)), "test", NO_WAIT)
    assert RetryPolicy(max_delay_s=5).delay(0, "3") == 3 and RetryPolicy(first_delay_s=1, max_delay_s=5).delay(4) == 5

"""What can go wrong talking to a PACS, each with the fix in its message."""

from __future__ import annotations

from scalpel.core.errors import DataError, ScalpelError


class PacsError(ScalpelError):
    """The PACS could not be reached, refused a request, or gave up after retries."""


class PacsAuthError(PacsError):
    """The PACS refused the credentials (HTTP 401/403, or a DIMSE association rejected)."""


class PacsNotFoundError(PacsError):
    """Nothing on the PACS matches the query (unknown patient, study or series)."""


class NotDicomAnswerError(PacsError, DataError):
    """The server answered with something that is not DICOM (an HTML page, a proxy's error...)."""


class SeriesChangedError(PacsError, DataError):
    """Instances were added to or removed from a series while it was being pulled."""


class IncompleteSeriesError(PacsError, DataError):
    """A series on disk lacks instances the PACS listed: it is partial and never reported complete."""

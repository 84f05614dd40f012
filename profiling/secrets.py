"""API keys for real endpoints: where they come from, where they may go, and never into output.

- **Source**: a file (``--api-key-file``; first line, surrounding whitespace
  stripped) or the environment (``DRIFTSIM_API_KEY``, then
  ``OPENAI_API_KEY``); never a plain command-line value, which would land in
  shell history, ``ps`` output and the ``command`` recorded in reports.
- **Destination**: :class:`EndpointAuth` adds ``Authorization: Bearer ...``
  only to requests whose origin (scheme, host, port) is the endpoint's; a
  redirect elsewhere goes out without it (httpx also strips it on a
  cross-origin redirect, and driftsim's clients do not follow redirects).
- **Never in output**: :class:`ApiKey` prints as ``ApiKey(***)`` (repr,
  str, f-strings, dataclass reprs, JSON via ``str``); every key loaded is
  registered so :func:`redact` replaces it in any text (exception messages,
  server answers that echo it, per-request error columns).
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

import httpx

#: environment variables read for a key, in order
ENV_VARS = ("DRIFTSIM_API_KEY", "OPENAI_API_KEY")
MASK = "***"
_KNOWN: set[str] = set()  # every key value seen by this process, for redact()


class SecretError(ValueError):
    """A key file is missing, unreadable or empty; the message names the file, never its content."""


class ApiKey:
    """A secret string that does not print itself. :meth:`reveal` is for the Authorization header only."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        value = value.strip()
        if not value:
            raise SecretError("an API key must not be empty")
        if any(c in value for c in "\r\n"):
            raise SecretError("an API key must be one line")
        self._value = value
        if len(value) >= 4:  # shorter ones would redact ordinary text
            _KNOWN.add(value)

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"ApiKey({MASK})"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __reduce__(self):  # no pickling into result files or worker processes by accident
        raise TypeError("ApiKey cannot be pickled")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ApiKey) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("ApiKey", self._value))


def as_key(value: "str | ApiKey | None") -> ApiKey | None:
    """``value`` as an :class:`ApiKey` (None stays None)."""
    if value is None or isinstance(value, ApiKey):
        return value
    return ApiKey(value)


def load_api_key(file: Path | str | None = None, env: "os._Environ[str] | dict[str, str] | None" = None) -> ApiKey | None:
    """The key from ``file`` if given, else from the first of :data:`ENV_VARS` that is set; None if none."""
    if file is not None:
        path = Path(file)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise SecretError(f"--api-key-file {path}: no such file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise SecretError(f"--api-key-file {path}: cannot read it ({exc.__class__.__name__})") from None
        line = text.strip().splitlines()[0].strip() if text.strip() else ""
        if not line:
            raise SecretError(f"--api-key-file {path}: the file is empty; put the key on its first line")
        return ApiKey(line)
    env = os.environ if env is None else env
    for name in ENV_VARS:
        value = env.get(name, "").strip()
        if value:
            return ApiKey(value)
    return None


def redact(text: "str | None") -> "str | None":
    """``text`` with every key this process has loaded replaced by ``***``."""
    if not text or not _KNOWN:
        return text
    for value in _KNOWN:
        if value in text:
            text = text.replace(value, MASK)
    return text


def _origin(url: "httpx.URL | str") -> tuple[str, str, int | None]:
    u = httpx.URL(str(url))
    port = u.port or {"http": 80, "https": 443}.get(u.scheme)
    return u.scheme, u.host.lower(), port


class EndpointAuth(httpx.Auth):
    """Bearer authentication for one endpoint's origin only."""

    def __init__(self, key: ApiKey, base_url: str) -> None:
        self._key = key
        self._origin = _origin(base_url)

    def auth_flow(self, request: httpx.Request):
        if _origin(request.url) == self._origin:
            request.headers["Authorization"] = f"Bearer {self._key.reveal()}"
        else:
            request.headers.pop("Authorization", None)
        yield request

    def __repr__(self) -> str:
        return f"EndpointAuth({MASK} for {urlsplit(str(self._origin[1])).path or self._origin[1]})"

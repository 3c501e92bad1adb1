"""The browser half of ``connect --oauth``: the authorization URL and a one-shot loopback receiver.

GHL's authorization-code flow ends with the browser being redirected to the app's redirect URI
with ``?code=…&state=…``. A CLI has no web server, so for the few seconds the user spends on GHL's
choose-location page it runs one on ``127.0.0.1`` (never a public interface): it answers the first
request to ``/callback``, shows "you can close this tab", and stops. ``state`` is a fresh random
value per attempt; an answer carrying another one is refused (it is not this attempt's answer).

GHL marketplace apps register fixed redirect URIs, so a real app needs a fixed port: register
``http://127.0.0.1:<port>/callback`` for the app and pass ``--redirect-port <port>``. Port 0 (the
default) takes any free port, which suits the sandbox and apps that accept any loopback port.

Nothing here talks to GHL: the code is traded for tokens by ``auth.exchange_code``.
"""

from __future__ import annotations

import hmac
import html
import secrets
import time
import webbrowser
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from types import TracebackType
from typing import Self
from urllib.parse import parse_qs, quote, urlencode, urlsplit

from ghlsync_cli.errors import AuthError, ConfigError, InputError, TryAgainError

LOOPBACK_HOST = "127.0.0.1"
CALLBACK_PATH = "/callback"
SCOPES = ("contacts.readonly", "contacts.write")
#: A connection that sends nothing (a browser's speculative preconnect) is dropped after this.
_REQUEST_READ_TIMEOUT = 5.0


def new_state() -> str:
    """An unguessable ``state`` value for one authorization attempt."""
    return secrets.token_urlsafe(24)


def authorization_url(
    base_url: str,
    *,
    client_id: str,
    redirect_uri: str,
    state: str,
    scopes: tuple[str, ...] = SCOPES,
) -> str:
    """GHL's choose-location URL for this app, redirect URI and attempt."""
    query = urlencode(
        {
            "response_type": "code",
            "redirect_uri": redirect_uri,
            "client_id": client_id,
            "scope": " ".join(scopes),
            "state": state,
        },
        quote_via=quote,
    )
    separator = "&" if urlsplit(base_url).query else "?"
    return f"{base_url}{separator}{query}"


@dataclass(frozen=True)
class CallbackAnswer:
    """What the browser brought back to the redirect URI."""

    code: str | None
    state: str | None
    error: str | None
    error_description: str | None


class _OneShotServer(HTTPServer):
    answer: CallbackAnswer | None = None

    def handle_error(self, request: object, client_address: object) -> None:
        """Drop a broken connection quietly (the default prints a traceback on stderr)."""


class _CallbackHandler(BaseHTTPRequestHandler):
    server: _OneShotServer
    timeout = _REQUEST_READ_TIMEOUT

    def do_GET(self) -> None:
        """Take the first ``/callback`` answer; anything else (a favicon) gets 404."""
        parts = urlsplit(self.path)
        if parts.path != CALLBACK_PATH or self.server.answer is not None:
            self._reply(404, "Not found", "This address only takes ghlsync's OAuth answer.")
            return
        query = parse_qs(parts.query)

        def first(name: str) -> str | None:
            values = query.get(name)
            return values[0] if values else None

        answer = CallbackAnswer(
            code=first("code"),
            state=first("state"),
            error=first("error"),
            error_description=first("error_description"),
        )
        self.server.answer = answer
        if answer.error or not answer.code:
            self._reply(400, "ghlsync was not authorized", "Return to the terminal for details.")
        else:
            self._reply(200, "ghlsync is authorized", "You can close this tab.")

    def _reply(self, status: int, title: str, text: str) -> None:
        body = (
            f"<!doctype html><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<h1>{html.escape(title)}</h1><p>{html.escape(text)}</p>"
        ).encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Silence: the default logs the request line, and it carries the code."""


class LoopbackReceiver:
    """A one-shot HTTP server on ``127.0.0.1:<port>`` that waits for the OAuth redirect."""

    def __init__(self, *, port: int = 0) -> None:
        self._port = port
        self._server: _OneShotServer | None = None

    def __enter__(self) -> Self:
        try:
            self._server = _OneShotServer((LOOPBACK_HOST, self._port), _CallbackHandler)
        except OSError as exc:
            raise ConfigError(
                f"Cannot listen on {LOOPBACK_HOST}:{self._port} for the OAuth redirect: "
                f"{exc.strerror}.",
                hint="Choose another --redirect-port (it must match a redirect URI registered "
                "for the app), or stop what is using it.",
            ) from None
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is not None:
            self._server.server_close()
            self._server = None

    @property
    def redirect_uri(self) -> str:
        """``http://127.0.0.1:<port>/callback``, the URI the app sends GHL."""
        return f"http://{LOOPBACK_HOST}:{self._bound().server_address[1]}{CALLBACK_PATH}"

    def wait_for_code(self, *, state: str, timeout: float) -> str:
        """Serve until the redirect arrives (or ``timeout`` s pass); return its code.

        Raises AuthError (77) when GHL reports an error (the user denied access), InputError (65)
        when ``state`` does not match this attempt, TryAgainError (75) on timeout.
        """
        server = self._bound()
        deadline = time.monotonic() + timeout
        while server.answer is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TryAgainError(
                    f"No answer from the browser within {timeout:g} s.",
                    hint="Run the command again and finish the authorization in the browser "
                    "(or allow more time with --timeout).",
                )
            server.timeout = remaining
            server.handle_request()
        answer = server.answer
        if answer.state is None or not hmac.compare_digest(answer.state, state):
            raise InputError(
                "The OAuth answer's state does not match this authorization attempt; it was "
                "not started by this command (an old browser tab, or a forged link).",
                hint="Run ghlsync connect --oauth again and use the URL it prints.",
            )
        if answer.error:
            detail = f": {answer.error_description}" if answer.error_description else ""
            raise AuthError(
                f"GHL did not authorize ghlsync ({answer.error}{detail}).",
                hint="Run ghlsync connect --oauth again and approve the app for a location.",
            )
        if not answer.code:
            raise InputError(
                "The OAuth answer carries no authorization code.",
                hint="Run ghlsync connect --oauth again.",
            )
        return answer.code

    def _bound(self) -> _OneShotServer:
        if self._server is None:
            raise RuntimeError("LoopbackReceiver is used outside its with-block")
        return self._server


def request_code(
    authorize_url: str,
    *,
    client_id: str,
    port: int,
    timeout: float,
    open_browser: bool,
    tell: Callable[[str], None],
) -> tuple[str, str]:
    """The browser half of the flow: show GHL's page, wait for the redirect.

    Returns ``(code, redirect_uri)``; ``tell`` shows messages (the URL among them) to the user.
    """
    with LoopbackReceiver(port=port) as receiver:
        redirect_uri = receiver.redirect_uri
        state = new_state()
        url = authorization_url(
            authorize_url, client_id=client_id, redirect_uri=redirect_uri, state=state
        )
        if open_browser and webbrowser.open(url):
            tell(f"Opened the browser to authorize ghlsync. If it did not open, visit:\n{url}")
        else:
            tell(f"Open this URL in a browser to authorize ghlsync:\n{url}")
        tell(f"Waiting for GHL's answer on {redirect_uri} ...")
        return receiver.wait_for_code(state=state, timeout=timeout), redirect_uri

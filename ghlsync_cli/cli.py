"""The ``ghlsync`` command line: parse, build objects, call one core function, render.

This is the only module that exits. Every command runs inside :func:`_exit_on_error`, which turns a
GhlsyncError into ``Error:``/``Hint:`` lines on stderr and the contract's exit code.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from ghlsync_cli import __version__, console
from ghlsync_cli.auth import TOKEN_PATH, BearerAuth, OAuthAuth, OAuthTokens, TokenStore
from ghlsync_cli.config import Settings, load_settings
from ghlsync_cli.errors import (
    EX_SOFTWARE,
    ApiError,
    AuthError,
    ConfigError,
    ContactNotFoundError,
    GhlsyncError,
    InputError,
    PushQueuedError,
    UnavailableError,
)
from ghlsync_cli.ghl.client import GHLClient, RetryPolicy, build_http_client
from ghlsync_cli.locks import location_lock
from ghlsync_cli.store import Store
from ghlsync_cli.sync import local
from ghlsync_cli.sync.engine import SyncEngine, SyncReport
from ghlsync_cli.timeutil import utc_now

app = typer.Typer(
    name="ghlsync",
    help="Two-way contact sync between a GoHighLevel location and a local SQLite file.\n\n"
    "Exit codes: 0 ok, 1 bug, 2 usage, 65 bad input data, 69 GHL unavailable, "
    "75 try again later, 77 reconnect required, 78 configuration error.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    rich_markup_mode="markdown",
    context_settings={"help_option_names": ["-h", "--help"]},
)
contacts_app = typer.Typer(
    help="The local side: add, update, delete, show and list contacts.", no_args_is_help=True
)
conflicts_app = typer.Typer(
    help="Conflicts decided by the merge (GHL won; both values kept).", no_args_is_help=True
)
app.add_typer(contacts_app, name="contacts")
app.add_typer(conflicts_app, name="conflicts")

JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]


@dataclass
class Globals:
    """Options given before the command."""

    db: Path | None = None
    location: str | None = None
    api_base: str | None = None
    default_region: str | None = None
    debug: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def settings(self) -> Settings:
        """Settings from flags, environment and config file."""
        return load_settings(
            db=self.db,
            location=self.location,
            api_base=self.api_base,
            default_region=self.default_region,
        )


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ghlsync {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    ctx: typer.Context,
    db: Annotated[
        Path | None, typer.Option("--db", envvar="GHLSYNC_DB", help="SQLite file to sync into.")
    ] = None,
    location: Annotated[
        str | None,
        typer.Option(
            "--location",
            envvar="GHLSYNC_LOCATION",
            help="GHL location id (may be omitted when exactly one is connected).",
        ),
    ] = None,
    api_base: Annotated[
        str | None,
        typer.Option("--api-base", envvar="GHLSYNC_API_BASE", help="GHL API base URL."),
    ] = None,
    default_region: Annotated[
        str | None,
        typer.Option(
            "--default-region",
            envvar="GHLSYNC_DEFAULT_REGION",
            help="Region for phone numbers without a country code (ISO 3166, default US).",
        ),
    ] = None,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks of unexpected errors.")
    ] = False,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json", help="Print one JSON document on stdout (the same as the command's --json)."
        ),
    ] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Keep GoHighLevel contacts and a SQLite file in sync, both ways."""
    ctx.obj = Globals(db, location, api_base, default_region, debug)
    if as_json:
        ctx.default_map = _json_defaults(ctx.command)


def _json_defaults(command: Any) -> dict[str, Any]:
    """``--json`` given before the command: the default of every reporting command's --json."""
    subcommands = getattr(command, "commands", None)  # a group (typer's own click types)
    if subcommands is not None:
        return {name: _json_defaults(sub) for name, sub in subcommands.items()}
    return {"as_json": True} if any(p.name == "as_json" for p in command.params) else {}


# ---- shared plumbing -------------------------------------------------------------------------


@contextmanager
def _exit_on_error(debug: bool) -> Iterator[None]:
    """The one error boundary: GhlsyncError → message, hint and its exit code."""
    try:
        yield
    except GhlsyncError as exc:
        console.error(exc.message, exc.hint)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        console.error("Interrupted.", "Rerun the same command: it resumes where it stopped.")
        raise typer.Exit(130) from None
    except (typer.Exit, typer.Abort):
        raise
    except Exception as exc:
        if debug:
            raise
        console.error(
            f"Unexpected error: {type(exc).__name__}: {exc}",
            "This is a bug; rerun with --debug for the traceback and report it.",
        )
        raise typer.Exit(EX_SOFTWARE) from None


@dataclass
class Context:
    """Objects one command needs, built once by :func:`_context`."""

    settings: Settings
    store: Store
    tokens: TokenStore
    stack: ExitStack

    def location_id(self, *, disconnected_ok: bool = False) -> str:
        """The location to act on: --location (if connected), or the only connected one.

        ``disconnected_ok``: --location may also name a location connected once (local edits).
        """
        if self.settings.location:
            location_id = self.settings.location
            known = self.store.get_location(location_id)
            if known is None or (known["disconnected_at"] and not disconnected_ok):
                raise ConfigError(
                    f"Location {location_id} is not connected.",
                    hint=f"Run: ghlsync connect --location-id {location_id} --token-stdin "
                    "(or set GHLSYNC_TOKEN).",
                )
            return location_id
        connected = self.store.list_locations(connected_only=True)
        if len(connected) == 1:
            return str(connected[0]["location_id"])
        if not connected:
            raise ConfigError(
                "No location is connected.",
                hint="Run: ghlsync connect --location-id ID --token-stdin",
            )
        ids = ", ".join(r["location_id"] for r in connected)
        raise ConfigError(
            f"Several locations are connected ({ids}).",
            hint="Choose one with --location ID or GHLSYNC_LOCATION.",
        )

    def client(self, location_id: str) -> GHLClient:
        """A GHL client for one location, closed when the command ends."""
        return self.client_with_auth(location_id, self._auth(location_id))

    def _auth(self, location_id: str) -> BearerAuth | OAuthAuth:
        """GHLSYNC_TOKEN or a systemd credential first; else the location's kind of token."""
        static = self.tokens.static_token()
        if static:
            return BearerAuth(lambda: static)
        location = self.store.get_location(location_id)
        if location is not None and location["token_kind"] == "oauth":

            def record_expiry(tokens: OAuthTokens) -> None:
                with self.store.write():
                    self.store.set_token_expiry(location_id, tokens.expires_at_text)

            return OAuthAuth(
                location_id=location_id,
                tokens=self.tokens,
                token_url=f"{self.settings.api_base}{TOKEN_PATH}",
                on_refresh=record_expiry,
            )
        return BearerAuth(lambda: self.tokens.access_token(location_id))

    def client_with_auth(self, location_id: str, auth: BearerAuth | OAuthAuth) -> GHLClient:
        """A GHL client for one location with the given credentials."""
        settings = self.settings
        http = build_http_client(settings.api_base, auth=auth, timeout=settings.http_timeout)
        client = GHLClient(
            http,
            location_id=location_id,
            retry=RetryPolicy(
                attempts=settings.retry_attempts,
                wait_initial=settings.retry_wait_initial,
                wait_max=settings.retry_wait_max,
            ),
        )
        self.stack.callback(client.close)
        return client

    def engine(self, location_id: str, *, online: bool = True, progress: Any = None) -> SyncEngine:
        """A sync engine for one location."""
        return SyncEngine(
            self.store,
            self.client(location_id) if online else None,
            location_id=location_id,
            region=self.settings.default_region,
            progress=progress,
        )

    def lock(self, location_id: str) -> None:
        """Hold the location's lock until the command ends (exit 75 if another run has it)."""
        self.stack.enter_context(location_lock(self.settings.db, location_id))


@contextmanager
def _context(ctx: typer.Context) -> Iterator[Context]:
    """Settings, store and token store for a command, inside the error boundary."""
    options: Globals = ctx.obj or Globals()
    with _exit_on_error(options.debug), ExitStack() as stack:
        settings = options.settings()
        store = Store.open(settings.db, busy_timeout_ms=settings.busy_timeout_ms)
        stack.callback(store.close)
        yield Context(settings=settings, store=store, tokens=_token_store(settings), stack=stack)


def _token_store(settings: Settings) -> TokenStore:
    """The secrets of the configured store (keyring or opted-in file); refresh locks by the db."""
    return TokenStore(secrets_file=settings.secrets_file, lock_dir=settings.db.expanduser().parent)


def _read_secret_from_stdin(what: str) -> str:
    if sys.stdin.isatty():
        console.info(f"Paste the {what}, then press Enter:")
    secret = sys.stdin.readline().strip()
    if not secret:
        raise InputError(
            f"No {what} on stdin.", hint="Pipe it in: ghlsync connect ... --token-stdin < file"
        )
    return secret


def _render_report(report: SyncReport, as_json: bool) -> None:
    if as_json:
        console.emit_json(report.to_dict())
        return
    pull, push = report.pull, report.push
    head = "dry run — nothing changed. " if report.dry_run else ""
    out = console.stdout()
    out.print(
        f"{head}{report.kind} {report.location_id}: {pull.fetched} fetched "
        f"({pull.created} created, {pull.linked} linked, {pull.updated} updated, "
        f"{pull.unchanged} unchanged, {pull.skipped} skipped), {pull.conflicts} conflicts; "
        f"{pull.soft_deleted} marked inactive; pushed {push.created} created, "
        f"{push.updated} updated, "
        f"{push.failed} failed, {push.queued} still queued; {report.api_calls} API calls."
    )
    if report.dry_run:
        out.print(
            f"Plan: {pull.created + pull.flagged} creates, {pull.updated + pull.linked} updates, "
            f"{report.would_soft_delete} soft-deletes, {report.pending_pushes} pushes.",
            markup=False,
        )
        if report.delete_refused:
            console.error(
                f"A real run would refuse to mark {report.would_soft_delete} contacts inactive "
                f"(the limit is {report.delete_limit}).",
                "Rerun with --force or a higher --max-delete if that is expected.",
            )


def _check_push_outcome(report: SyncReport) -> None:
    if report.push_error:
        raise PushQueuedError(
            f"Pulled, but GHL could not be reached to push: {report.push_error} "
            f"({report.push.queued} changes stay queued).",
            queued=report.push.queued,
            cause=report.push_error,
        )


# ---- connect / disconnect ----------------------------------------------------------------------


@app.command()
def connect(
    ctx: typer.Context,
    location_id: Annotated[
        str | None,
        typer.Option(
            "--location-id",
            help="The GHL location (sub-account) id; with --oauth, optional (checked against "
            "the location chosen in GHL).",
        ),
    ] = None,
    token_stdin: Annotated[
        bool, typer.Option("--token-stdin", help="Read a private-integration token from stdin.")
    ] = False,
    oauth: Annotated[
        bool,
        typer.Option(
            "--oauth", help="Authorize a marketplace app in the browser (OAuth, loopback redirect)."
        ),
    ] = False,
    client_id: Annotated[
        str | None, typer.Option("--client-id", help="The OAuth app's client id (with --oauth).")
    ] = None,
    client_secret_stdin: Annotated[
        bool,
        typer.Option(
            "--client-secret-stdin",
            help="Read the OAuth client secret from stdin (then kept with the other secrets; "
            "later connects and refreshes find it there).",
        ),
    ] = False,
    no_browser: Annotated[
        bool,
        typer.Option("--no-browser", help="Print the authorization URL instead of opening it."),
    ] = False,
    redirect_port: Annotated[
        int,
        typer.Option(
            "--redirect-port",
            min=0,
            max=65535,
            help="Port of the loopback redirect http://127.0.0.1:PORT/callback (0: any free "
            "port). GHL apps register fixed redirect URIs: give the port of the one registered.",
        ),
    ] = 0,
    timeout: Annotated[
        float,
        typer.Option("--timeout", min=1, help="Seconds to wait for the browser (with --oauth)."),
    ] = 300.0,
    as_json: JsonOption = False,
) -> None:
    """Connect a GHL location: verify the token with one API call, store it, record the location.

    A private-integration token comes from stdin (--token-stdin) or GHLSYNC_TOKEN (then it is
    verified and nothing is stored). With --oauth, the browser opens GHL's choose-location page;
    the answer comes back to a one-shot server on 127.0.0.1, and the access and refresh tokens
    go to the keyring (or the GHLSYNC_SECRETS_FILE you opted in to). Secrets never go on the
    command line.

    Example: ghlsync connect --location-id ve9EPM428h8vShlRW1KT --token-stdin < token.txt

    Example: ghlsync connect --oauth --client-id 65f0c0ffee --client-secret-stdin < secret.txt
    """
    if oauth != (client_id is not None) or (oauth and token_stdin) or not (oauth or location_id):
        console.error(
            "Give --location-id (with --token-stdin or GHLSYNC_TOKEN), or --oauth --client-id ID.",
            "See: ghlsync connect --help",
        )
        raise typer.Exit(2)
    with _context(ctx) as c:
        if client_id is not None:
            result = _connect_oauth(
                c,
                client_id=client_id,
                expected_location=location_id,
                secret_from_stdin=client_secret_stdin,
                open_browser=not no_browser,
                redirect_port=redirect_port,
                timeout=timeout,
            )
        else:
            assert location_id is not None
            result = _connect_token(c, location_id, token_stdin=token_stdin)
        if as_json:
            console.emit_json(result)
        else:
            where = {
                "env": "GHLSYNC_TOKEN (not stored)",
                "private": _secret_store_name(c),
                "oauth": f"OAuth, kept in {_secret_store_name(c)}",
            }[result["token"]]
            console.info(
                f"Connected location {result['location_id']} ({result['contacts_in_ghl']} "
                f"contacts in GHL); token from {where}.\nNext: ghlsync initial-sync"
            )


def _secret_store_name(c: Context) -> str:
    return "the secrets file" if c.tokens.secrets.kind == "file" else "the keyring"


def _connect_token(c: Context, location_id: str, *, token_stdin: bool) -> dict[str, Any]:
    """Verify a private-integration (or GHLSYNC_TOKEN) token, store it, record the location."""
    env_token = c.tokens.env_token
    if env_token is None and not token_stdin:
        raise ConfigError(
            "No token given.",
            hint="Pass --token-stdin and pipe the token in, or set GHLSYNC_TOKEN.",
        )
    token = env_token or _read_secret_from_stdin("private-integration token")
    total = c.client_with_auth(location_id, BearerAuth(lambda: token)).verify()
    kind = "env" if env_token else "private"
    if not env_token:
        c.tokens.save_access_token(location_id, token)
    with c.store.write():
        c.store.save_location(location_id, token_kind=kind, now=utc_now())
    return {
        "location_id": location_id,
        "token": kind,
        "contacts_in_ghl": total,
        "db": str(c.settings.db),
    }


def _connect_oauth(
    c: Context,
    *,
    client_id: str,
    expected_location: str | None,
    secret_from_stdin: bool,
    open_browser: bool,
    redirect_port: int,
    timeout: float,
) -> dict[str, Any]:
    """Authorize in the browser, trade the code for tokens, verify, store, record the location."""
    from ghlsync_cli.auth import exchange_code
    from ghlsync_cli.oauth_flow import request_code

    c.tokens.check_writable()  # no keyring and no opt-in file: exit 78 before the browser opens
    if secret_from_stdin:
        client_secret = _read_secret_from_stdin("OAuth client secret")
    else:
        client_secret = c.tokens.client_secret(client_id) or ""
    if not client_secret:
        raise ConfigError(
            f"No client secret is stored for OAuth app {client_id}.",
            hint=f"Pipe it in once: ghlsync connect --oauth --client-id {client_id} "
            "--client-secret-stdin < secret.txt",
        )
    code, redirect_uri = request_code(
        c.settings.oauth_authorize_url,
        client_id=client_id,
        port=redirect_port,
        timeout=timeout,
        open_browser=open_browser,
        tell=console.info,
    )
    http = build_http_client(c.settings.api_base, auth=None, timeout=c.settings.http_timeout)
    c.stack.callback(http.close)
    tokens = exchange_code(
        http,
        token_url=f"{c.settings.api_base}{TOKEN_PATH}",
        client_id=client_id,
        client_secret=client_secret,
        code=code,
        redirect_uri=redirect_uri,
    )
    location_id = tokens.location_id
    if not location_id:
        raise ConfigError(
            "GHL issued a token for no single location (an agency-level install).",
            hint="Authorize again and choose one sub-account on GHL's page.",
        )
    if expected_location and location_id != expected_location:
        raise ConfigError(
            f"GHL authorized location {location_id}, not {expected_location}.",
            hint="Authorize again and choose that location, or drop --location-id.",
        )
    total = c.client_with_auth(location_id, BearerAuth(lambda: tokens.access_token)).verify()
    c.tokens.save_oauth(location_id, tokens)
    if secret_from_stdin:
        c.tokens.save_client_secret(client_id, client_secret)
    with c.store.write():
        c.store.save_location(
            location_id, token_kind="oauth", token_expires_at=tokens.expires_at_text, now=utc_now()
        )
    return {
        "location_id": location_id,
        "token": "oauth",
        "contacts_in_ghl": total,
        "token_expires_at": tokens.expires_at_text,
        "db": str(c.settings.db),
    }


@app.command()
def disconnect(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Forget the location's tokens; its contacts stay in the database.

    Example: ghlsync --location ve9EPM428h8vShlRW1KT disconnect
    """
    with _context(ctx) as c:
        location_id = c.location_id()
        removed = c.tokens.delete(location_id)
        with c.store.write():
            known = c.store.mark_disconnected(location_id, now=utc_now())
        if not known:
            raise ConfigError(f"Location {location_id} is not connected.")
        if as_json:
            console.emit_json({"location_id": location_id, "secrets_removed": removed})
        else:
            console.info(f"Disconnected {location_id}; its contacts are kept.")


# ---- sync commands -----------------------------------------------------------------------------


@app.command("initial-sync")
def initial_sync(
    ctx: typer.Context,
    as_json: JsonOption = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar on a terminal.")] = True,
) -> None:
    """Pull every GHL contact into the database, then push local-only contacts.

    Safe to interrupt (Ctrl-C, kill -9): a rerun resumes after the last committed page.

    Example: ghlsync initial-sync --json
    """
    with _context(ctx) as c:
        location_id = c.location_id()
        c.lock(location_id)
        with console.progress_bar(progress and not as_json) as bar:
            report = c.engine(location_id, progress=bar).initial_sync(
                page_limit=c.settings.page_limit
            )
        _render_report(report, as_json)
        _check_push_outcome(report)


@app.command()
def reconcile(
    ctx: typer.Context,
    full: Annotated[
        bool, typer.Option("--full", help="Also list every GHL id to find contacts deleted in GHL.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan; change nothing locally or in GHL.")
    ] = False,
    all_locations: Annotated[
        bool, typer.Option("--all", help="Reconcile every connected location.")
    ] = False,
    max_delete: Annotated[
        int | None,
        typer.Option(
            "--max-delete",
            min=0,
            help="Refuse a --full sweep that would mark more contacts inactive "
            "(default: 10% of linked contacts, at most 500).",
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Apply a --full sweep even above --max-delete.")
    ] = False,
    as_json: JsonOption = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar on a terminal.")] = True,
) -> None:
    """Pull what changed in GHL since the last run, then push queued local changes.

    Cheap when little changed: it asks GHL only for contacts updated since its cursor. Run it from
    cron or a systemd timer (see: ghlsync schedule). A second overlapping run exits 75 at once.

    Example: ghlsync reconcile --all --json
    """
    with _context(ctx) as c:
        if all_locations:
            location_ids = [r["location_id"] for r in c.store.list_locations(connected_only=True)]
        else:
            location_ids = [c.location_id()]
        reports: list[SyncReport] = []
        failures: list[GhlsyncError] = []
        for location_id in location_ids:
            try:
                with ExitStack() as run:
                    run.enter_context(location_lock(c.settings.db, location_id))
                    bar = run.enter_context(console.progress_bar(progress and not as_json))
                    report = c.engine(location_id, progress=bar).reconcile(
                        full=full,
                        dry_run=dry_run,
                        max_delete=max_delete,
                        force=force,
                        page_limit=c.settings.page_limit,
                        overlap_seconds=c.settings.overlap_seconds,
                    )
                reports.append(report)
                if not as_json:
                    _render_report(report, False)
                _check_push_outcome(report)
            except GhlsyncError as exc:
                if not all_locations:
                    if as_json and reports:
                        console.emit_json(reports[0].to_dict())
                    raise
                console.error(f"{location_id}: {exc.message}", exc.hint)
                failures.append(exc)
        if as_json:
            data = [r.to_dict() for r in reports]
            console.emit_json(data if all_locations else data[0])
        if failures:
            raise typer.Exit(failures[0].exit_code)


@app.command()
def schedule(
    ctx: typer.Context,
    systemd: Annotated[
        bool, typer.Option("--systemd", help="Print systemd service and timer units.")
    ] = False,
    cron: Annotated[bool, typer.Option("--cron", help="Print a crontab line.")] = False,
    every_minutes: Annotated[
        int, typer.Option("--every", min=1, max=1440, help="Minutes between reconciles.")
    ] = 15,
) -> None:
    """Print what runs reconcile every 15 minutes (and serve as a service) on this machine.

    Nothing is installed: redirect the output into files (see the README).

    Example: ghlsync schedule --systemd > units.txt
    """
    from ghlsync_cli import schedule as scheduling

    if systemd == cron:
        console.error("Choose one of --systemd or --cron.")
        raise typer.Exit(2)
    options: Globals = ctx.obj or Globals()
    with _exit_on_error(options.debug):
        settings = options.settings()
        executable = scheduling.find_executable()
        if systemd:
            for unit in scheduling.systemd_units(
                executable=executable, db=settings.db, every_minutes=every_minutes
            ):
                sys.stdout.write(f"# ---- {unit.name} ----\n{unit.text}\n")
        else:
            sys.stdout.write(
                scheduling.crontab_line(
                    executable=executable, db=settings.db, every_minutes=every_minutes
                )
                + "\n"
            )


@app.command()
def push(
    ctx: typer.Context,
    contact_ids: Annotated[
        list[str] | None, typer.Argument(help="Local contact ids to push.")
    ] = None,
    pending: Annotated[bool, typer.Option("--pending", help="Push every queued change.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Send local changes to GHL now (the given contacts, or every queued one with --pending).

    Example: ghlsync push --pending
    """
    if not contact_ids and not pending:
        console.error("Nothing to push.", "Give contact ids, or --pending for every queued change.")
        raise typer.Exit(2)
    with _context(ctx) as c:
        location_id = c.location_id()
        engine = c.engine(location_id)
        for contact_id in contact_ids or []:
            if c.store.get_contact(contact_id) is None:
                raise ContactNotFoundError(contact_id)
        try:
            counts = engine.push(contact_ids=contact_ids or None)
        except UnavailableError as exc:
            queued = len(c.store.pending_pushes(location_id))
            raise PushQueuedError(
                f"GHL could not be reached: {exc.message} ({queued} changes stay queued).",
                queued=queued,
                cause=exc.message,
            ) from None
        counts.queued = len(c.store.pending_pushes(location_id))
        if as_json:
            console.emit_json(asdict(counts))
        else:
            console.info(
                f"Pushed: {counts.created} created, {counts.updated} updated, "
                f"{counts.unchanged} unchanged, {counts.failed} failed; {counts.queued} queued."
            )
            for err in counts.errors:
                console.error(f"contact {err['contact_id']}: {err['error']}")


# ---- webhooks ------------------------------------------------------------------------------------


@app.command("replay-webhook")
def replay_webhook(
    ctx: typer.Context,
    files: Annotated[
        list[str],
        typer.Argument(help="Files of saved bodies: JSON object, array or lines; - = stdin."),
    ],
    verify: Annotated[
        bool, typer.Option("--verify", help="Check the signatures saved with the bodies.")
    ] = False,
    public_key: Annotated[
        list[Path] | None,
        typer.Option("--public-key", help="Also trust this PEM public key (repeatable)."),
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar on a terminal.")] = True,
    as_json: JsonOption = False,
) -> None:
    """Feed saved webhook bodies through the pipeline serve uses; replaying twice changes nothing.

    Every body is checked first: one malformed body (exit 65) means nothing is applied. A saved item
    may carry its headers: `{"headers": {"X-GHL-Signature": "..."}, "body": "RAW BODY TEXT"}`.

    Example: ghlsync replay-webhook events.jsonl --json
    """
    from ghlsync_cli.sync.inbox import DISCONNECTED
    from ghlsync_cli.sync.replay import replay
    from ghlsync_cli.webhooks import SignatureVerifier

    with _context(ctx) as c:
        verifier = SignatureVerifier.load(public_key or []) if verify else None
        sources = [(n, sys.stdin.buffer.read() if n == "-" else _read_file(n)) for n in files]
        with console.progress_bar(progress and not as_json) as bar:
            replayed = replay(
                c.store,
                sources,
                verifier=verifier,
                region=c.settings.default_region,
                progress=bar,
            )
        for location_id in {r.location_id for r in replayed if r.outcome == DISCONNECTED}:
            if location_id is not None:
                _forget_secrets(c.tokens, location_id)
        results = [asdict(r) for r in replayed]
        if as_json:
            console.emit_json({"events": results})
            return
        for r in results:
            dup = " (already received)" if r["duplicate"] else ""
            # Plain tab-separated lines (not rich), so `cut -f` and awk work on them.
            sys.stdout.write(
                f"{r['source']}\t{r['type']}\t{r['ghl_id'] or '-'}\t{r['outcome']}{dup}\n"
            )


def _forget_secrets(tokens: TokenStore, location_id: str) -> None:
    """Remove an uninstalled location's secrets, as `disconnect` does; a failure only warns
    (the location is disconnected in the database either way)."""
    try:
        tokens.delete(location_id)
    except GhlsyncError as exc:
        console.error(f"Could not remove the secrets of location {location_id}: {exc.message}")


def _read_file(name: str) -> bytes:
    try:
        return Path(name).read_bytes()
    except OSError as exc:
        raise InputError(f"Cannot read {name}: {exc.strerror}.") from None


@app.command()
def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(min=0, max=65535, help="Port to listen on (0: any free port).")
    ] = 8787,
    public_key: Annotated[
        list[Path] | None,
        typer.Option("--public-key", help="Also trust this PEM public key (repeatable)."),
    ] = None,
    insecure_no_verify: Annotated[
        bool,
        typer.Option("--insecure-no-verify", help="Accept unsigned webhooks (local testing only)."),
    ] = False,
    show_pii: Annotated[
        bool, typer.Option("--show-pii", help="Do not mask emails and phones in logs.")
    ] = False,
) -> None:
    """Receive GHL webhooks (POST /webhooks/ghl) and apply them within seconds.

    Signatures are verified with GHL's published keys; a body is stored before it is acknowledged.

    Example: ghlsync serve --host 0.0.0.0 --port 8787
    """
    import logging

    from ghlsync_cli import logs
    from ghlsync_cli.asgi import serve_forever
    from ghlsync_cli.server import WEBHOOK_PATHS, ServeConfig, create_app
    from ghlsync_cli.webhooks import SignatureVerifier

    options: Globals = ctx.obj or Globals()
    with _exit_on_error(options.debug):
        settings = options.settings()
        Store.open(settings.db, busy_timeout_ms=settings.busy_timeout_ms).close()
        verifier = None if insecure_no_verify else SignatureVerifier.load(public_key or [])
        logs.configure(level=logging.INFO, mask=not show_pii)
        config = ServeConfig(
            db=settings.db,
            verifier=verifier,
            region=settings.default_region,
            busy_timeout_ms=settings.busy_timeout_ms,
            on_disconnect=_token_store(settings).delete,
        )
        if insecure_no_verify:
            console.error("Signature checks are off (--insecure-no-verify): use only for tests.")

        def ready(url: str) -> None:
            console.info(f"Receiving GHL webhooks on {url}{WEBHOOK_PATHS[0]} (db {settings.db}).")

        try:
            serve_forever(create_app(config), host=host, port=port, on_ready=ready)
        except OSError as exc:
            raise ConfigError(
                f"Cannot listen on {host}:{port}: {exc.strerror}.",
                hint="Choose another --port, or stop what is using it.",
            ) from None


# ---- contacts ----------------------------------------------------------------------------------

FirstName = Annotated[str | None, typer.Option("--first-name", help="First name.")]
LastName = Annotated[str | None, typer.Option("--last-name", help="Last name.")]
Name = Annotated[str | None, typer.Option("--name", help="Full name, split at the first space.")]
Email = Annotated[str | None, typer.Option("--email", help="Email address.")]
Phone = Annotated[str | None, typer.Option("--phone", help="Phone; stored as E.164.")]
Company = Annotated[str | None, typer.Option("--company", help="Company name.")]
Address1 = Annotated[str | None, typer.Option("--address1", help="Street address.")]
City = Annotated[str | None, typer.Option("--city", help="City.")]
State = Annotated[str | None, typer.Option("--state", help="State or region.")]
PostalCode = Annotated[str | None, typer.Option("--postal-code", help="Postal code.")]
Country = Annotated[str | None, typer.Option("--country", help="Country (ISO code, e.g. US).")]


def _given(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _push_now(c: Context, row: dict[str, Any], as_json: bool) -> dict[str, Any]:
    """Push one edited contact at once when its location is connected; else leave it queued.

    The change is saved (and queued) before the push, so whatever stops the push, --json still
    prints the contact, and the exit code says what to do: 75 retry later (GHL unreachable or its
    answer unusable), 77 reconnect, 78 fix the configuration, 65 fix the contact (GHL refused it).
    """
    location = c.store.get_location(row["location_id"])
    if location is None or location["disconnected_at"]:
        return row
    try:
        counts = c.engine(row["location_id"]).push(contact_ids=[row["id"]])
    except (ApiError, AuthError, ConfigError) as exc:
        _emit_contact(c, row, as_json)
        if not isinstance(exc, ApiError):
            console.info(f"Saved locally as {row['id']}; the change is queued for GHL.")
            raise
        why = "could not be reached" if isinstance(exc, UnavailableError) else "answered wrongly"
        raise PushQueuedError(
            f"Saved locally as {row['id']}, but GHL {why}: {exc.message.rstrip('.')}. "
            "The change is queued.",
            queued=1,
            cause=exc.message,
        ) from None
    if counts.failed:
        _emit_contact(c, row, as_json)
        raise InputError(
            f"Saved locally as {row['id']}, but GHL refused it: {counts.errors[0]['error']}",
            hint=f"Correct it with: ghlsync contacts update {row['id']} …; "
            "the change is then pushed again.",
        )
    return c.store.get_contact(row["id"]) or row


def _emit_contact(c: Context, row: dict[str, Any], as_json: bool) -> None:
    """With --json, the contact as saved, before an error about its push."""
    if as_json:
        console.emit_json(console.contact_json(c.store.get_contact(row["id"]) or row))


@contacts_app.command("add")
def contacts_add(
    ctx: typer.Context,
    first_name: FirstName = None,
    last_name: LastName = None,
    name: Name = None,
    email: Email = None,
    phone: Phone = None,
    company: Company = None,
    address1: Address1 = None,
    city: City = None,
    state: State = None,
    postal_code: PostalCode = None,
    country: Country = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="A tag (repeatable).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Add a contact locally and push it to GHL at once (queued, exit 75, if GHL is unreachable).

    Example: ghlsync contacts add --first-name Mary --email mary@example.com --tag vip
    """
    with _context(ctx) as c:
        location_id = c.location_id(disconnected_ok=True)  # pushed once it is connected again
        values = _given(
            first_name=first_name,
            last_name=last_name,
            name=name,
            email=email,
            phone=phone,
            company=company,
            address1=address1,
            city=city,
            state=state,
            postal_code=postal_code,
            country=country,
            tags=tag,
        )
        row = local.add_contact(
            c.store, location_id=location_id, values=values, region=c.settings.default_region
        )
        row = _push_now(c, row, as_json)
        if as_json:
            console.emit_json(console.contact_json(row))
        else:
            linked = f" (GHL id {row['ghl_id']})" if row["ghl_id"] else " (queued for GHL)"
            console.info(f"Added contact {row['id']}{linked}.")


@contacts_app.command("update")
def contacts_update(
    ctx: typer.Context,
    contact_id: Annotated[str, typer.Argument(help="Local contact id.")],
    first_name: FirstName = None,
    last_name: LastName = None,
    name: Name = None,
    email: Email = None,
    phone: Phone = None,
    company: Company = None,
    address1: Address1 = None,
    city: City = None,
    state: State = None,
    postal_code: PostalCode = None,
    country: Country = None,
    tag: Annotated[
        list[str] | None, typer.Option("--tag", help="Replace all tags (repeatable).")
    ] = None,
    add_tag: Annotated[list[str] | None, typer.Option("--add-tag", help="Add a tag.")] = None,
    remove_tag: Annotated[
        list[str] | None, typer.Option("--remove-tag", help="Remove a tag.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Change fields of a contact ("" clears a field) and push the change at once.

    Example: ghlsync contacts update 3f9a1c2b7d10 --email new@example.com --add-tag vip
    """
    with _context(ctx) as c:
        values = _given(
            first_name=first_name,
            last_name=last_name,
            name=name,
            email=email,
            phone=phone,
            company=company,
            address1=address1,
            city=city,
            state=state,
            postal_code=postal_code,
            country=country,
            tags=tag,
        )
        row = local.update_contact(
            c.store,
            contact_id,
            values=values,
            add_tags=add_tag,
            remove_tags=remove_tag,
            region=c.settings.default_region,
        )
        row = _push_now(c, row, as_json)
        if as_json:
            console.emit_json(console.contact_json(row))
        else:
            console.info(f"Updated contact {row['id']}.")


@contacts_app.command("delete")
def contacts_delete(
    ctx: typer.Context,
    contact_id: Annotated[str, typer.Argument(help="Local contact id.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Delete a contact locally (kept as status=deleted; never deleted in GHL, never resurrected).

    Example: ghlsync contacts delete 3f9a1c2b7d10 --yes
    """
    with _context(ctx) as c:
        row = c.store.get_contact(contact_id)
        if row is None:
            raise ContactNotFoundError(contact_id)
        if (
            not yes
            and sys.stdin.isatty()
            and not typer.confirm(f"Delete {row.get('name') or contact_id} locally?")
        ):
            console.info("Nothing deleted.")  # the answer asked for, not an error
            return
        row = local.delete_contact(c.store, contact_id)
        if as_json:
            console.emit_json(console.contact_json(row))
        else:
            console.info(f"Deleted contact {contact_id} locally (kept as a tombstone).")


@contacts_app.command("show")
def contacts_show(
    ctx: typer.Context,
    contact_id: Annotated[str, typer.Argument(help="Local contact id.")],
    as_json: JsonOption = False,
) -> None:
    """Show one contact.

    Example: ghlsync contacts show 3f9a1c2b7d10 --json
    """
    with _context(ctx) as c:
        row = c.store.get_contact(contact_id)
        if row is None:
            raise ContactNotFoundError(contact_id)
        if as_json:
            console.emit_json(console.contact_json(row))
        else:
            console.contact_detail(row)


@contacts_app.command("list")
def contacts_list(
    ctx: typer.Context,
    status: Annotated[
        str | None, typer.Option("--status", help="Only active, inactive or deleted contacts.")
    ] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="At most this many.")] = None,
    as_json: JsonOption = False,
) -> None:
    """List contacts of every status (or one, with --status).

    Example: ghlsync contacts list --status active --json
    """
    if status is not None and status not in ("active", "inactive", "deleted"):
        console.error(f"Unknown status {status!r}.", "Use active, inactive or deleted.")
        raise typer.Exit(2)
    with _context(ctx) as c:
        location = c.settings.location
        rows = c.store.list_contacts(location_id=location, status=status, limit=limit)
        if as_json:
            console.emit_json([console.contact_json(r) for r in rows])
        else:
            console.contacts_table(rows)
            console.info(f"{len(rows)} contacts.")


# ---- conflicts and status ------------------------------------------------------------------------


@conflicts_app.command("list")
def conflicts_list(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Fields both sides changed: GHL's value was kept, the local value is recorded here.

    Example: ghlsync conflicts list --json
    """
    with _context(ctx) as c:
        rows = c.store.list_conflicts(location_id=c.settings.location)
        if as_json:
            console.emit_json(
                [
                    {
                        "contact_id": r["contact_id"],
                        "contact_name": r["contact_name"],
                        "field": r["field"],
                        "local_value": r["local_value"],
                        "ghl_value": r["ghl_value"],
                        "base_value": r["base_value"],
                        "winner": r["winner"],
                        "source": r["source"],
                        "detected_at": r["detected_at"],
                    }
                    for r in rows
                ]
            )
            return
        console.rows_table(
            ("contact", "field", "local value", "GHL value (kept)", "when"),
            [
                (
                    f"{r['contact_id']} {r['contact_name'] or ''}".strip(),
                    r["field"],
                    _show(r["local_value"]),
                    _show(r["ghl_value"]),
                    r["detected_at"],
                )
                for r in rows
            ],
        )
        console.info(f"{len(rows)} conflicts.")


def _show(value: Any) -> str:
    if value is None:
        return "(empty)"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


@app.command()
def status(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """The health of each location: token, contacts, last runs, cursor, queue, conflicts.

    Example: ghlsync status --json
    """
    with _context(ctx) as c:
        locations = c.store.list_locations()
        if c.settings.location:
            locations = [loc for loc in locations if loc["location_id"] == c.settings.location]
        reports = [_location_status(c, loc) for loc in locations]
        if as_json:
            console.emit_json({"db": str(c.settings.db), "locations": reports})
            return
        if not reports:
            console.info(
                "No location is connected. Run: ghlsync connect --location-id ID --token-stdin"
            )
        for r in reports:
            runs = r["last_runs"]
            pairs = [
                ("connected", "yes" if r["connected"] else "no (disconnected)"),
                ("token", _token_summary(r["token"])),
                ("contacts", ", ".join(f"{k} {v}" for k, v in r["contacts"].items())),
                ("high water", r["cursor"]["high_water"] or "-"),
                ("queued pushes", str(r["pushes"]["queued"])),
                ("failed pushes", str(r["pushes"]["failed"])),
                ("conflicts", str(r["conflicts"])),
                ("flagged", str(r["flagged"])),
                ("inbox backlog", str(r["inbox_backlog"])),
            ]
            for kind, run in runs.items():
                pairs.append(
                    (f"last {kind}", f"{run['finished_at'] or run['started_at']} {run['outcome']}")
                )
            console.key_value_table(f"Location {r['location_id']}", pairs)
            for failure in r["failed_pushes"]:
                console.info(f"  push failed: {failure['contact_id']} {failure['error']}")


_TOKEN_SOURCES = {
    "env": "GHLSYNC_TOKEN",
    "credential": "the systemd credential",
    "keyring": "the keyring",
    "file": "the secrets file",
}


def _token_summary(token: Mapping[str, Any]) -> str:
    """The status line of a token: what it is, where it is read from, when it expires."""
    kind = "OAuth" if token["kind"] == "oauth" else "private-integration token"
    where = _TOKEN_SOURCES.get(token["source"], token["source"])
    expires = f", expires {token['expires_at']}" if token.get("expires_at") else ""
    return f"{kind}, from {where}{expires}"


def _location_status(c: Context, loc: dict[str, Any]) -> dict[str, Any]:
    location_id = loc["location_id"]
    cursor = c.store.get_cursor(location_id, "reconcile") or {}
    initial = c.store.get_cursor(location_id, "initial") or {}
    runs = c.store.last_runs(location_id)
    return {
        "location_id": location_id,
        "connected": loc["disconnected_at"] is None,
        "connected_at": loc["connected_at"],
        "token": {
            "kind": loc["token_kind"],
            "source": c.tokens.source(location_id),
            "expires_at": loc["token_expires_at"],
        },
        "contacts": c.store.count_contacts(location_id),
        "cursor": {
            "high_water": cursor.get("high_water"),
            "initial_sync_complete": bool(initial.get("completed_at")),
            "initial_sync_fetched": initial.get("fetched"),
        },
        "last_runs": {
            kind: {
                "started_at": run["started_at"],
                "finished_at": run["finished_at"],
                "outcome": run["outcome"],
                "counts": run["counts"],
                "error": run["error"],
            }
            for kind, run in runs.items()
        },
        "pushes": c.store.outbox_counts(location_id),
        "failed_pushes": [
            {
                "contact_id": f["contact_id"],
                "name": f["name"],
                "error": f["last_error"],
                "at": f["last_error_at"],
            }
            for f in c.store.failed_pushes(location_id)
        ],
        "conflicts": c.store.count_conflicts(location_id),
        "flagged": c.store.count_flags(location_id),
        "inbox_backlog": int(
            c.store.scalar(
                "SELECT count(*) FROM inbox WHERE status = 'pending' AND "
                "(location_id = ? OR location_id IS NULL)",
                (location_id,),
            )
        ),
    }


# ---- developer commands --------------------------------------------------------------------------


@app.command()
def sandbox(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8788,
    seed: Annotated[int, typer.Option("--seed", help="Number of generated contacts.")] = 0,
    random_seed: Annotated[int, typer.Option("--random-seed", help="Seed of the generator.")] = 1,
    location_id: Annotated[
        str | None, typer.Option("--location-id", help="The sandbox location id.")
    ] = None,
    rate_limit: Annotated[
        bool, typer.Option("--rate-limit/--no-rate-limit", help="Enforce GHL's rate limits.")
    ] = True,
    webhook_url: Annotated[
        str | None, typer.Option("--webhook-url", help="Deliver signed webhooks to this URL.")
    ] = None,
) -> None:
    """Run the bundled GHL API sandbox (a local fake of GHL, for demos and tests).

    The token it accepts is "sandbox-token" (or $GHLSYNC_SANDBOX_TOKEN).

    Example: ghlsync sandbox --port 8788 --seed 1000
    """
    from ghlsync_cli.sandbox import DEFAULT_LOCATION_ID, DEFAULT_TOKEN, SandboxConfig, serve_sandbox

    config = SandboxConfig(
        host=host,
        port=port,
        seed_count=seed,
        seed=random_seed,
        location_id=location_id or DEFAULT_LOCATION_ID,
        token=os.environ.get("GHLSYNC_SANDBOX_TOKEN") or DEFAULT_TOKEN,
        rate_limit_enabled=rate_limit,
        webhook_url=webhook_url,
    )

    def ready(url: str) -> None:
        console.info(
            f"GHL sandbox listening on {url} (location {config.location_id}, "
            f"{seed} contacts). Ctrl-C stops it."
        )
        if config.token == DEFAULT_TOKEN:  # a token of the user's own is not echoed
            # The sandbox's token is no secret: GHLSYNC_TOKEN works with or without a keyring.
            console.info(
                f"Use it: export GHLSYNC_API_BASE={url} GHLSYNC_TOKEN={DEFAULT_TOKEN} && "
                f"ghlsync connect --location-id {config.location_id}"
            )

    with _exit_on_error(False):
        try:
            serve_sandbox(config, on_ready=ready)
        except OSError as exc:
            raise ConfigError(
                f"Cannot listen on {host}:{port}: {exc.strerror}.",
                hint="Choose another --port, or stop what is using it.",
            ) from None


def main() -> None:
    """Console-script entry point."""
    # The client logs its own retry lines; stamina's default hook would add bare ones on stderr.
    import stamina.instrumentation

    stamina.instrumentation.set_on_retry_hooks([])
    app(prog_name="ghlsync")

"""Who may talk to the PS on ZeroMQ, and how each end sets up its socket (ml.data_plane_auth).

Every worker makes its own credential at start and registers its public part with the controller
(`POST /workers/register`, `data_key`, behind the run token); the PS asks the controller for the keys of the
live workers (`GET /ps/workers`) and its ZAP handler (ps/zap.py) admits a connection only when the key it
proves is one of them. A connection is refused in the handshake, before ZeroMQ takes a single message from
it; the ZAP user id of an admitted connection is the fingerprint of its key, which ZeroMQ attaches to every
message, so the PS knows at each message which worker sent it (`KeyRegistry.name_of`).

    curve  (default) CurveZMQ: the worker's key is a Curve25519 keypair it generated; only the public key
           leaves the worker (the registration carries it, the secret key never crosses the network nor
           reaches the controller's database). The PS has its own keypair (ps/main.py); workers learn its
           public key from the registration answer. Every byte is encrypted and authenticated.
    plain  ZeroMQ PLAIN: the worker's key is a random secret (a password) that the registration carries;
           the username is the worker's name. Authenticated, not encrypted: for trusted networks only, where
           CURVE's cost matters (a dense update of the default model: make bench-ps, README).

Why the worker generates its keypair instead of the controller handing one out: then no secret key ever
travels or sits in the controller's database, and the registration answer holds only public values.

Keys are Z85 text (40 characters for 32 bytes), as ZeroMQ writes them.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass

import zmq
import zmq.utils.z85

AUTH_MODES = ("curve", "plain")
KEY_PATTERN = r"^[0-9A-Za-z.:+=^!/*?&<>()\[\]{}@%$#-]{40}$"  # Z85 of 32 bytes
KEY_LENGTH = 40
ZAP_DOMAIN = "dist-llm-train"
HEALTH_NAME = "health"  # the PS's own health check (`ps --health`): admitted for PING only


@dataclass(frozen=True)
class Credential:
    """One end's key. `public` is what the controller and the PS may know: the CURVE public key, or (PLAIN)
    the password itself. `secret`: the CURVE secret key; PLAIN: the same password."""
    mode: str
    public: str
    secret: str

    def __repr__(self) -> str:  # never print a secret, even in a traceback
        return f"Credential({self.mode}, public {fingerprint(self.public) if self.mode == 'plain' else self.public})"


def new_credential(mode: str) -> Credential:
    if mode == "curve":
        public, secret = zmq.curve_keypair()
        return Credential(mode, public.decode(), secret.decode())
    if mode == "plain":
        password = zmq.utils.z85.encode(os.urandom(32)).decode()
        return Credential(mode, password, password)
    raise ValueError(f"data-plane auth {mode!r}: expected one of {', '.join(AUTH_MODES)}")


def fingerprint(key: str) -> str:
    """What identifies a key in logs and as the ZAP user id: 16 hex digits of its SHA-256 (a PLAIN key is a
    password: its fingerprint tells nothing about it)."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def setup_client(sock: zmq.Socket, own: Credential, name: str, server_key: str | None) -> None:
    """Before `connect`: prove `own` to the PS as worker `name`; CURVE also checks the PS is the one whose
    public key is `server_key` (ValueError without it)."""
    if own.mode == "curve":
        if server_key is None:
            raise ValueError("CURVE needs the PS's public key")
        sock.curve_serverkey = server_key.encode()
        sock.curve_publickey = own.public.encode()
        sock.curve_secretkey = own.secret.encode()
    else:
        sock.plain_username = name.encode()
        sock.plain_password = own.secret.encode()


def setup_server(sock: zmq.Socket, own: Credential) -> None:
    """Before `bind`: the PS's end; every handshake then goes to the context's ZAP handler."""
    sock.zap_domain = ZAP_DOMAIN.encode()
    if own.mode == "curve":
        sock.curve_server = True
        sock.curve_secretkey = own.secret.encode()
    else:
        sock.plain_server = True


class KeyRegistry:
    """The keys the PS admits: the live workers' as the controller last listed them (`replace`), plus fixed
    ones (the PS's health check). Pure: the ZAP handler asks, ps/zap.py fetches the list.

    A key listed for two names is admitted for neither (a token holder registering someone else's public
    key must not take over its connection's identity)."""

    def __init__(self, mode: str, fixed: dict[str, str] | None = None):
        if mode not in AUTH_MODES:
            raise ValueError(f"data-plane auth {mode!r}: expected one of {', '.join(AUTH_MODES)}")
        self.mode = mode
        self.fixed = dict(fixed or {})
        self.banned: set[str] = set()  # fingerprints refused for good, whatever the controller lists
        self.by_name: dict[str, str] = dict(self.fixed)  # name -> key
        self.names: dict[str, str] = {}  # fingerprint -> name
        self.replace({})

    def replace(self, live: dict[str, str]) -> None:
        """Admit exactly these workers (name -> key) and the fixed entries; every other key stops being
        admitted, for new connections and for every further message of open ones (`name_of`)."""
        by_name = {**live, **self.fixed}
        seen: dict[str, list[str]] = {}
        for name, key in by_name.items():
            seen.setdefault(key, []).append(name)
        # one atomic assignment each: the PS's loop reads them while the ZAP thread replaces them
        self.by_name = {name: key for name, key in by_name.items()
                        if len(seen[key]) == 1 and fingerprint(key) not in self.banned}
        self.names = {fingerprint(key): name for name, key in self.by_name.items()}

    def ban(self, user: str) -> None:
        """Refuse this key from now on, even while the controller lists it: its worker broke the message
        bounds; it must register again, with a new key, to be admitted."""
        self.banned.add(user)
        self.replace({name: key for name, key in self.by_name.items() if name not in self.fixed})

    def admit_curve(self, public_key: bytes) -> str | None:
        """The ZAP user id (key fingerprint) for a CURVE client's 32-byte public key, or None: refused."""
        if self.mode != "curve" or len(public_key) != 32:
            return None
        user = fingerprint(zmq.utils.z85.encode(public_key).decode())
        return user if user in self.names else None

    def admit_plain(self, username: bytes, password: bytes) -> str | None:
        """The ZAP user id for PLAIN credentials: the password must be the key registered for that name."""
        if self.mode != "plain":
            return None
        try:
            name, given = username.decode(), password.decode()
        except UnicodeDecodeError:
            return None
        key = self.by_name.get(name)
        if key is None or not hmac.compare_digest(key.encode(), given.encode()):
            return None
        return fingerprint(key)

    def name_of(self, user: str | None) -> str | None:
        """The worker a connection's ZAP user id proves it is, while its key is still admitted; else None."""
        return self.names.get(user) if user else None

"""The collaboration's initial peer: an identity every container can derive, so no address has to be exchanged.

The PS container's bootstrap peer (hive/bootstrap.py) listens with an Ed25519 key derived from the run token and
the run id (HMAC-SHA256(RUN_TOKEN, "hivemind initial peer " + run_id) is the key's 32-byte seed): fresh for every
run, never written to the repository or the results, and known only to holders of the token. Every worker computes
the same key, hence the same libp2p peer id, and dials `/dns4/ps/tcp/PORT/p2p/<peer id>` without asking anyone.

libp2p encodings (its peer-id and crypto specs): a private key file is the protobuf `PrivateKey{Type = 1 (Ed25519),
Data = seed || public key}`; the peer id of an Ed25519 key is the identity multihash (code 0x00, length 36) of the
protobuf `PublicKey{Type = 1, Data = public key}` (36 bytes: 08 01 12 20 + 32), written in base58btc ("12D3KooW...").
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

PORT = 31337  # every peer listens on this TCP port on every interface of its container
ED25519 = 1  # libp2p crypto KeyType
BASE58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def seed(run_token: str, run_id: str) -> bytes:
    return hmac.new(run_token.encode(), f"hivemind initial peer {run_id}".encode(), hashlib.sha256).digest()


def public_key(key_seed: bytes) -> bytes:
    key = Ed25519PrivateKey.from_private_bytes(key_seed)
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def key_file(key_seed: bytes) -> bytes:
    """The p2pd identity file (protobuf PrivateKey) of the key with this seed."""
    data = key_seed + public_key(key_seed)
    return bytes([0x08, ED25519, 0x12, len(data)]) + data


def peer_id(key_seed: bytes) -> str:
    encoded = bytes([0x08, ED25519, 0x12, 32]) + public_key(key_seed)
    return base58(bytes([0x00, len(encoded)]) + encoded)


def base58(data: bytes) -> str:
    """Bitcoin's base58 (libp2p's base58btc): leading zero bytes become '1'."""
    number = int.from_bytes(data, "big")
    digits = ""
    while number:
        number, rest = divmod(number, 58)
        digits = BASE58[rest] + digits
    return "1" * (len(data) - len(data.lstrip(b"\0"))) + digits


def initial_peer(host: str, key_seed: bytes, port: int = PORT) -> str:
    """The multiaddr a worker dials: the PS container by its compose name, with the bootstrap's peer id."""
    return f"/dns4/{host}/tcp/{port}/p2p/{peer_id(key_seed)}"

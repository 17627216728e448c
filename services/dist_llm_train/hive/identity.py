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

PORT = 31337  # the initial peer listens on this TCP port; worker i on PORT + 1 + i (local runs share one host)
ED25519 = 1  # libp2p crypto KeyType
BASE58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def seed(run_token: str, run_id: str) -> bytes:
    return hmac.new(run_token.encode(), f"hivemind initial peer {run_id}".encode(), hashlib.sha256).digest()


def public_key(key_seed: bytes) -> bytes:
    """The Ed25519 public key of a 32-byte seed (RFC 8032, 5.1.5): the clamped first half of SHA-512(seed)
    times the base point, compressed. Plain integer arithmetic: the main image has no crypto library, and
    only this one derivation (no signing) is needed outside hivemind's daemon."""
    digest = hashlib.sha512(key_seed).digest()
    scalar = (int.from_bytes(digest[:32], "little") & ((1 << 254) - 8)) | (1 << 254)
    x, y, z, _ = _multiply(scalar, _BASE)
    z_inverse = pow(z, _P - 2, _P)
    x, y = x * z_inverse % _P, y * z_inverse % _P
    return (y | (x & 1) << 255).to_bytes(32, "little")


# Edwards25519 in extended coordinates (X, Y, Z, T), x = X/Z, y = Y/Z, x y = T/Z (RFC 8032, 5.1.4).
_P = 2**255 - 19
_D = -121665 * pow(121666, _P - 2, _P) % _P


def _add(a: tuple, b: tuple) -> tuple:
    x1, y1, z1, t1 = a
    x2, y2, z2, t2 = b
    e, f = (y1 - x1) * (y2 - x2) % _P, (y1 + x1) * (y2 + x2) % _P
    g, h = 2 * _D * t1 * t2 % _P, 2 * z1 * z2 % _P
    e, f, g, h = f - e, h - g, h + g, f + e
    return e * f % _P, g * h % _P, f * g % _P, e * h % _P


def _multiply(scalar: int, point: tuple) -> tuple:
    result = (0, 1, 1, 0)  # the neutral element
    while scalar:
        if scalar & 1:
            result = _add(result, point)
        point, scalar = _add(point, point), scalar >> 1
    return result


def _base_point() -> tuple:
    y = 4 * pow(5, _P - 2, _P) % _P
    xx = (y * y - 1) * pow(_D * y * y + 1, _P - 2, _P) % _P
    x = pow(xx, (_P + 3) // 8, _P)
    if (x * x - xx) % _P:
        x = x * pow(2, (_P - 1) // 4, _P) % _P
    x = _P - x if x & 1 else x  # the base point's x is even
    return x, y, 1, x * y % _P


_BASE = _base_point()


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
    """The multiaddr a worker dials: the PS container by its compose name (or an IPv4 address, local runs),
    with the bootstrap's peer id."""
    protocol = "ip4" if all(part.isdigit() for part in host.split(".")) and host.count(".") == 3 else "dns4"
    return f"/{protocol}/{host}/tcp/{port}/p2p/{peer_id(key_seed)}"

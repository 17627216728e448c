"""Worker identity: compose container names, the DNS wire format, a real PTR query on loopback."""

from __future__ import annotations

import socket
import struct
import threading

import pytest

from dist_llm_train.worker.identity import (PTR, IdentityError, encode_name, index_from_name, parse_ptr_answer,
                                            resolve, reverse_lookup)


@pytest.mark.parametrize("name, expected", [
    ("dlt-worker-1.dlt_wan.", ("dlt-worker-1", 0)),
    ("dlt-worker-12.dlt_wan", ("dlt-worker-12", 11)),
    ("e2e-kill-worker-ab12-worker-3.net", ("e2e-kill-worker-ab12-worker-3", 2)),
])
def test_index_is_the_container_number_minus_one(name, expected):
    assert index_from_name(name) == expected


@pytest.mark.parametrize("name", ["dlt-controller-1.dlt_wan", "dlt-worker-0.dlt_wan", "worker-1", "dlt-worker-x"])
def test_other_names_are_refused(name):
    with pytest.raises(IdentityError, match="not <project>-worker-<n>"):
        index_from_name(name)


def test_explicit_index_names_a_local_worker():
    assert resolve(3) == ("local-worker-3", 3)
    with pytest.raises(IdentityError):
        resolve(-1)


def answer_packet(query: bytes, ptr_name: str, compress: bool = True) -> bytes:
    """A DNS answer to `query` with one PTR record (name compressed as a pointer to the question)."""
    ident = query[:2]
    question = query[12:]
    owner = b"\xc0\x0c" if compress else question[:-4]
    rdata = encode_name(ptr_name)
    record = owner + struct.pack("!HHIH", PTR, 1, 600, len(rdata)) + rdata
    return ident + struct.pack("!HHHHH", 0x8180, 1, 1, 0, 0) + question + record


@pytest.mark.parametrize("compress", [True, False])
def test_ptr_answer_is_parsed(compress):
    query = struct.pack("!HHHHHH", 77, 0x0100, 1, 0, 0, 0) + encode_name("2.0.21.172.in-addr.arpa") + b"\0\x0c\0\x01"

    name = parse_ptr_answer(answer_packet(query, "dlt-worker-3.dlt_wan", compress), 77)

    assert name == "dlt-worker-3.dlt_wan"


@pytest.mark.parametrize("packet, words", [
    (b"\0\x4d", "short"),
    (struct.pack("!HHHHHH", 78, 0x8180, 0, 0, 0, 0), "another query"),
    (struct.pack("!HHHHHH", 77, 0x8183, 0, 0, 0, 0), "error code 3"),
    (struct.pack("!HHHHHH", 77, 0x8180, 0, 0, 0, 0), "no PTR record"),
    (struct.pack("!HHHHHH", 77, 0x8180, 1, 0, 0, 0) + b"\xc0\x0c", "too long or looping"),
])
def test_bad_answers_are_refused(packet, words):
    with pytest.raises(ValueError, match=words):
        parse_ptr_answer(packet, 77)


def test_reverse_lookup_against_a_dns_server_on_loopback():
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.settimeout(5)
    asked = []

    def serve():
        query, client = server.recvfrom(512)
        asked.append(query)
        server.sendto(answer_packet(query, "proj-worker-5.proj_wan"), client)

    thread = threading.Thread(target=serve)
    thread.start()
    name = reverse_lookup("172.21.0.9", server=server.getsockname(), timeout_s=5)
    thread.join()
    server.close()

    assert name == "proj-worker-5.proj_wan"
    assert encode_name("9.0.21.172.in-addr.arpa") in asked[0]
    assert index_from_name(name) == ("proj-worker-5", 4)

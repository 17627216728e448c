"""The data plane's key registry and credentials (dataplane.py), and the frame bounds of wire.check_bounds."""

import re

import pytest
import zmq
import zmq.utils.z85

from dist_llm_train import wire
from dist_llm_train.dataplane import KEY_PATTERN, KeyRegistry, fingerprint, new_credential


def raw(key: str) -> bytes:
    return zmq.utils.z85.decode(key.encode())


def test_a_curve_key_is_admitted_only_while_listed_for_one_live_worker():
    alice, bob = new_credential("curve"), new_credential("curve")
    registry = KeyRegistry("curve")
    assert registry.admit_curve(raw(alice.public)) is None

    registry.replace({"alice": alice.public, "bob": bob.public})
    user = registry.admit_curve(raw(alice.public))
    assert user == fingerprint(alice.public) and registry.name_of(user) == "alice"
    assert registry.admit_curve(raw(alice.secret)) is None  # a secret key is not a public one
    assert registry.admit_curve(b"short") is None

    registry.replace({"bob": bob.public})  # alice declared dead: her open connection loses its name too
    assert registry.admit_curve(raw(alice.public)) is None and registry.name_of(user) is None


def test_a_key_listed_for_two_names_is_admitted_for_neither():
    shared = new_credential("curve")
    registry = KeyRegistry("curve")
    registry.replace({"victim": shared.public, "thief": shared.public})
    assert registry.admit_curve(raw(shared.public)) is None


def test_plain_needs_the_password_registered_for_that_name():
    alice, bob = new_credential("plain"), new_credential("plain")
    registry = KeyRegistry("plain")
    registry.replace({"alice": alice.public, "bob": bob.public})
    user = registry.admit_plain(b"alice", alice.secret.encode())
    assert registry.name_of(user) == "alice"
    assert registry.admit_plain(b"alice", bob.secret.encode()) is None  # bob's password under alice's name
    assert registry.admit_plain(b"carol", alice.secret.encode()) is None
    assert registry.admit_plain(b"\xff", b"\xff") is None
    assert registry.admit_curve(raw(alice.public)) is None  # the other mechanism


def test_fixed_entries_stay_through_every_replace():
    health, worker = new_credential("curve"), new_credential("curve")
    registry = KeyRegistry("curve", fixed={"health": health.public})
    registry.replace({"w": worker.public})
    registry.replace({})
    assert registry.name_of(registry.admit_curve(raw(health.public))) == "health"
    assert registry.admit_curve(raw(worker.public)) is None


@pytest.mark.parametrize("mode", ["curve", "plain"])
def test_credentials_are_z85_keys_and_never_print_their_secret(mode):
    key = new_credential(mode)
    assert re.match(KEY_PATTERN, key.public) and re.match(KEY_PATTERN, key.secret)
    assert key.secret not in repr(key) and key.secret not in str(key)
    assert new_credential(mode).secret != key.secret


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="expected one of curve, plain"):
        KeyRegistry("null")
    with pytest.raises(ValueError, match="expected one of curve, plain"):
        new_credential("null")


@pytest.mark.parametrize("frames, total, code", [
    (4, 10, "too_many_frames"),
    (3, 101, "oversize"),
])
def test_bounds_refuse_the_frame_that_passes_them(frames, total, code):
    with pytest.raises(wire.WireError) as exc:
        wire.check_bounds(frames, total, max_frames=3, max_bytes=100)
    assert exc.value.code == code


def test_bounds_take_a_message_exactly_at_them():
    wire.check_bounds(3, 100, max_frames=3, max_bytes=100)
    assert wire.MAX_FRAMES == 1 + wire.MAX_ARRAYS


def test_a_banned_key_stays_refused_while_listed_and_a_new_key_is_admitted():
    old, new = new_credential("curve"), new_credential("curve")
    registry = KeyRegistry("curve")
    registry.replace({"w": old.public})
    user = registry.admit_curve(raw(old.public))
    registry.ban(user)
    assert registry.name_of(user) is None
    registry.replace({"w": old.public})  # the controller still lists it
    assert registry.admit_curve(raw(old.public)) is None
    registry.replace({"w": new.public})  # registered again with a new key
    assert registry.name_of(registry.admit_curve(raw(new.public))) == "w"

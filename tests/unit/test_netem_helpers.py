"""What a helper container copies from the sidecar's own (netem/helpers.py): image, shared volume, CPU weight,
and the capabilities it gets; the e2e tests check real helpers in a stack."""

from __future__ import annotations

import pytest

from dist_llm_train.netem.helpers import (LINKS_DIR, HelperError, caps_of, helper_name, socket_path, template_of,
                                          volume_name)

ATTRS = {
    "Image": "sha256:abc",
    "Mounts": [{"Type": "bind", "Destination": "/var/run/docker.sock", "Source": "/var/run/docker.sock"},
               {"Type": "volume", "Name": "dlt_netem-links", "Destination": str(LINKS_DIR)}],
    "HostConfig": {"CpuShares": 16384, "CapAdd": None},
}


def test_the_template_is_the_sidecars_image_volume_and_weight():
    template = template_of(ATTRS)
    assert (template.image, template.volume, template.cpu_shares) == ("sha256:abc", "dlt_netem-links", 16384)
    assert template.caps == ("NET_ADMIN", "NET_RAW")
    assert template_of(ATTRS, delayer_nice=-5).caps == ("NET_ADMIN", "NET_RAW", "SYS_NICE")
    assert template_of({**ATTRS, "HostConfig": {}}).cpu_shares is None  # the engine's default weight


def test_a_sidecar_without_the_shared_volume_is_refused_with_the_fix():
    with pytest.raises(HelperError, match="netem-links"):
        template_of({**ATTRS, "Mounts": ATTRS["Mounts"][:1]})


def test_capabilities_names_and_paths():
    assert caps_of(0) == caps_of(5) == ("NET_ADMIN", "NET_RAW")
    assert helper_name("dlt", "worker-3", "0123456789abcdef") == "dlt-netem-worker-3-0123456789ab"
    long_id = "f" * 64  # a Unix socket path has room for 107 bytes
    assert len(str(socket_path(long_id))) <= 107
    assert volume_name("dlt") == "dlt_netem-links"

"""nfnetlink_queue encoding and decoding against hand-built byte strings.

Netlink headers (nlmsghdr, nlattr) are in host byte order (little-endian on every platform we
run on); nfgenmsg's res_id and the queue attributes are big-endian.
"""

import errno
import sys

import pytest

from dist_llm_train.netem import nfqueue

pytestmark = pytest.mark.skipif(sys.byteorder != "little", reason="byte strings are written for little-endian hosts")


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


def test_single_accept_verdict():
    assert nfqueue.verdict(5, 7, nfqueue.NF_ACCEPT) == h(
        "20000000 0103 0100 00000000 00000000"  # len 32, type QUEUE<<8|VERDICT, REQUEST, seq 0, pid 0
        "00 00 0005"  # AF_UNSPEC, version 0, queue 5
        "0c00 0200 00000001 00000007"  # NFQA_VERDICT_HDR: NF_ACCEPT, id 7
    )


def test_batch_drop_verdict_names_the_highest_id():
    assert nfqueue.verdict(258, 0x01020304, nfqueue.NF_DROP, batch=True) == h(
        "20000000 0303 0100 00000000 00000000"  # type QUEUE<<8|VERDICT_BATCH
        "00 00 0102"
        "0c00 0200 00000000 01020304"
    )


def test_bind_asks_for_an_ack():
    assert nfqueue.config_cmd(5, nfqueue.CMD_BIND, seq=9) == h(
        "1c000000 0203 0500 09000000 00000000"  # len 28, type QUEUE<<8|CONFIG, REQUEST|ACK, seq 9
        "00 00 0005"
        "0800 0100 01 00 0002"  # NFQA_CFG_CMD: BIND, pad, AF_INET
    )


@pytest.mark.parametrize("gso, flags", [(True, "00000004"), (False, "00000000")])
def test_config_copies_metadata_sets_maxlen_and_never_fail_open(gso, flags):
    assert nfqueue.config_queue(5, seq=2, maxlen=10000, gso=gso) == h(
        "38000000 0203 0500 02000000 00000000"  # len 56
        "00 00 0005"
        "0900 0200 00000000 01 000000"  # NFQA_CFG_PARAMS: copy_range 0, COPY_META, 3 bytes padding
        "0800 0300 00002710"  # NFQA_CFG_QUEUE_MAXLEN 10000
        f"0800 0500 {flags}"  # NFQA_CFG_FLAGS: GSO or nothing (FAIL_OPEN is bit 0x1: never)
        "0800 0400 ffffffff"  # NFQA_CFG_MASK: every flag is set or cleared
    )


PACKET = h(
    "44000000 0003 0000 00000000 00000000"  # len 68, type QUEUE<<8|PACKET
    "02 00 0005"  # AF_INET, queue 5
    "0b00 0100 0000002a 0800 01 00"  # NFQA_PACKET_HDR: id 42, ETH_P_IP, hook 1, 1 byte padding
    "0800 0500 00000003"  # NFQA_IFINDEX_INDEV 3: skipped
    "1400 0400 0000000000000064 00000000000001f4"  # NFQA_TIMESTAMP 100 s + 500 us
    "0800 0e00 00000002"  # NFQA_SKB_INFO: GSO
)


def test_parse_packet_with_timestamp_and_gso():
    packets, errors = nfqueue.parse(PACKET, len(PACKET))
    assert packets == [nfqueue.Packet(id=42, length=None, timestamp=100.0005, gso=True)]
    assert errors == []


def test_parse_many_messages_and_errors_in_one_buffer():
    minimal = h("20000000 0003 0000 00000000 00000000 00 00 0005 0b00 0100 00000007 0800 01 00")
    ack = h("24000000 0200 0000 03000000 00000000 00000000" + "00" * 16)  # NLMSG_ERROR 0 = ack of seq 3
    enoent = h("24000000 0200 0000 04000000 00000000 feffffff" + "00" * 16)  # -ENOENT for seq 4
    cap_len = h("28000000 0003 0000 00000000 00000000 00 00 0005 0b00 0100 00000008 0800 01 00"
                "0800 0d00 0000ffff")  # NFQA_CAP_LEN 65535
    buf = minimal + ack + PACKET + enoent + cap_len
    packets, errors = nfqueue.parse(buf, len(buf))
    assert [(p.id, p.length) for p in packets] == [(7, None), (42, None), (8, 65535)]
    assert errors == [(3, 0), (4, errno.ENOENT)]


def test_parse_stops_at_end_and_ignores_trailing_space():
    buf = PACKET + b"\0" * 8
    assert len(nfqueue.parse(buf, len(PACKET))[0]) == 1


@pytest.mark.parametrize("buf, why", [
    (PACKET[:40], "overruns"),  # length says 68, only 40 bytes
    (h("1c000000 0003 0000 00000000 00000000 00 00 0005 0800 0500 00000003"), "NFQA_PACKET_HDR"),
    (h("1c000000 0003 0000 00000000 00000000 00 00 0005 0200 0100 00000000"), "attribute of length 2"),
    (h("1c000000 0003 0000 00000000 00000000 00 00 0005 0c00 0100 00000000"), "attribute of length 12"),
], ids=["message-overruns-buffer", "no-packet-header", "attribute-too-short", "attribute-overruns-message"])
def test_parse_refuses_malformed_messages(buf, why):
    with pytest.raises(ValueError, match=why):
        nfqueue.parse(buf, len(buf))


def test_read_counters_from_proc_format(tmp_path):
    proc = tmp_path / "nfnetlink_queue"
    proc.write_text(
        "    0  12345     0 2 65535     0     0        0  1\n"
        "    5  67890    17 1     0     3    11     4242  1\n"
    )
    assert nfqueue.read_counters(5, str(proc)) == nfqueue.QueueCounters(
        queue_num=5, queue_total=17, queue_dropped=3, user_dropped=11, id_sequence=4242)
    assert nfqueue.read_counters(6, str(proc)) is None

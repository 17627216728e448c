"""The sizes every part of the emulation computes with, in one place (backends, delayer, traces).

A full-size packet is two different byte counts depending on who counts: the delayer (NFQUEUE hands
it IP packets) and Mahimahi's traces count the IP packet; tc's qdiscs count the Ethernet frame.
"""

IP_PACKET_BYTES = 1500  # a full-size IP packet on a 1500-byte MTU (the delayer's unit, Mahimahi's)
FRAME_BYTES = IP_PACKET_BYTES + 14  # that packet as tc counts it: with its Ethernet header
SIZING_MBIT = 1000.0  # queues of a link without a rate cap are sized as if it ran at this rate

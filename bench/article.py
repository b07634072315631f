#!/usr/bin/env python3
"""The article's reference loop ("UDP as a Serverless Event Source"),
re-implemented faithfully as the benchmark's peer.

What it does is exactly what the article describes, and nothing more:

* an AF_INET / SOCK_RAW / IPPROTO_UDP socket (it sees every UDP datagram
  the host receives: no port filter);
* recvfrom(65535);
* the IPv4 header length from the low nibble of byte 0, times 4;
* the destination port as the big-endian u16 two bytes past the IP header;
* the payload from 8 bytes past the IP header;
* for each datagram, one boto3 ``events.put_events`` call with one entry:
  Source ``udp.raw``, DetailType ``UdpPacket``, Detail
  ``json.dumps({"Destination": {"Port": port}, "Payload": base64(payload)})``.

No batching, no filter, no retry of its own (boto3's defaults apply, as in
the article). The only additions are harness plumbing outside the loop: the
endpoint URL and Region come from the command line (the benchmark points it
at a local endpoint with dummy credentials), one "listening" line on stderr
once it is ready, and a hard time limit so that a forgotten run ends.

Usage: article.py --endpoint-url http://127.0.0.1:PORT [--region us-east-1]
                  [--max-seconds 600]
Needs root (raw socket) and boto3.
"""

import argparse
import base64
import json
import signal
import socket
import sys

import boto3


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint-url", required=True)
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument("--max-seconds", type=int, default=600)
    args = parser.parse_args()
    # Bounded: SIGALRM's default action ends the process.
    signal.alarm(args.max_seconds)

    events = boto3.client("events", region_name=args.region, endpoint_url=args.endpoint_url)
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
    print("listening", file=sys.stderr, flush=True)

    # --- the article's loop ---
    while True:
        data, _addr = sock.recvfrom(65535)
        ihl = (data[0] & 0x0F) * 4
        port = int.from_bytes(data[ihl + 2:ihl + 4], "big")
        payload = data[ihl + 8:]
        events.put_events(
            Entries=[
                {
                    "Source": "udp.raw",
                    "DetailType": "UdpPacket",
                    "Detail": json.dumps(
                        {
                            "Destination": {"Port": port},
                            "Payload": base64.b64encode(payload).decode(),
                        }
                    ),
                }
            ]
        )


if __name__ == "__main__":
    main()

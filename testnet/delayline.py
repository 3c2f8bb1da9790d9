#!/usr/bin/env python3
"""A delay line for kernels without netem: a TUN device whose packets are
written back after a fixed delay (plus up to JITTER ms, uniformly).

    delayline.py DEVICE DELAY_MS [JITTER_MS]

testnet/netns.sh routes what a host sends into DEVICE and what comes back
out of it onward, so every packet a host sends waits DELAY_MS. It prints
"ready" once the device exists, and on SIGTERM the number of packets it
delayed.
"""

import fcntl
import heapq
import os
import random
import select
import signal
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000


def main() -> int:
    if len(sys.argv) not in (3, 4):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    device = sys.argv[1]
    delay = float(sys.argv[2]) / 1000.0
    jitter = float(sys.argv[3]) / 1000.0 if len(sys.argv) == 4 else 0.0
    if delay < 0 or jitter < 0 or len(device.encode()) > 15:
        print("delay and jitter must be >= 0, the device name at most 15 bytes", file=sys.stderr)
        return 2
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", device.encode(), IFF_TUN | IFF_NO_PI))
    delayed = 0

    def stop(_signum, _frame):
        print(f"delayed {delayed} packets", flush=True)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    print("ready", flush=True)
    queue = []  # (due, order, packet): packets leave in due order
    while True:
        now = time.monotonic()
        while queue and queue[0][0] <= now:
            _, _, packet = heapq.heappop(queue)
            try:
                os.write(fd, packet)
            except OSError:
                pass  # the kernel refused it: a lost packet, as on a link
        timeout = max(0.0, queue[0][0] - now) if queue else None
        readable, _, _ = select.select([fd], [], [], timeout)
        if readable:
            packet = os.read(fd, 65536)
            delayed += 1
            due = time.monotonic() + delay + random.uniform(0.0, jitter)
            heapq.heappush(queue, (due, delayed, packet))


if __name__ == "__main__":
    sys.exit(main())

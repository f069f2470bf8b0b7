#!/usr/bin/env python3
"""A training job that cooperates with wsched's suspension protocol.

Stands in for a real training script: each "iteration" sleeps instead of
running a step on the GPUs in CUDA_VISIBLE_DEVICES. What it shows is the
protocol (see host/src/backend/process.rs), which a real script adds in the
same few places:

- at start, connect to the socket in WSCHED_CONTROL and say `hello 1`;
- after each iteration, report `iteration N SECONDS`, then look (without
  waiting) for a `suspend` from the host;
- on `suspend`, checkpoint, answer `suspended N`, and wait for `resume`.

Without WSCHED_CONTROL it just runs (and wsched would suspend it with
SIGSTOP instead).

    python3 examples/jobs/train.py --iterations 100 --step-seconds 0.05
"""

import argparse
import os
import select
import socket
import sys
import time


class Control:
    """The job's end of the control socket: lines in, lines out."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.buffer = b""
        self.send("hello 1")

    def send(self, line: str) -> None:
        self.sock.sendall((line + "\n").encode())

    def poll(self, timeout: float | None) -> str | None:
        """The next line from the host; waits up to `timeout` (None: forever)."""
        while b"\n" not in self.buffer:
            ready, _, _ = select.select([self.sock], [], [], timeout)
            if not ready:
                return None
            chunk = self.sock.recv(4096)
            if not chunk:
                sys.exit("wsched hung up")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode().strip()


def checkpoint(iteration: int) -> None:
    # A real job saves model and optimiser state here (and may free device
    # memory); this one only says so.
    print(f"checkpoint after iteration {iteration}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--step-seconds", type=float, default=0.05)
    args = parser.parse_args()

    path = os.environ.get("WSCHED_CONTROL")
    control = Control(path) if path else None
    print(f"job {os.environ.get('WSCHED_JOB_ID', '?')} on GPUs {os.environ.get('CUDA_VISIBLE_DEVICES', '')}",
          flush=True)

    for iteration in range(1, args.iterations + 1):
        started = time.monotonic()
        time.sleep(args.step_seconds)  # one training step
        if control is None:
            continue
        control.send(f"iteration {iteration} {time.monotonic() - started:.6f}")
        message = control.poll(0)
        if message is not None and message.startswith("suspend"):
            checkpoint(iteration)
            control.send(f"suspended {iteration}")
            while control.poll(None) != "resume":
                pass
            print(f"resumed after iteration {iteration}", flush=True)
    print("done", flush=True)


if __name__ == "__main__":
    main()

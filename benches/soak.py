"""Helpers of benches/soak.sh: `feed` writes a long mixed stream to stdout, `sink` is an
HTTP peer on 127.0.0.1 that stalls, fails and drops connections at random.

Every record carries a unique SOAK_SEQ, so that the sink can count records once even
when kubetag sends a request again after a failure."""

import json
import random
import socket
import sys
import threading
import time

CHATTER = [
    "Started Kubernetes systemd probe.",
    "I1204 09:00:00.000000    2101 kubelet.go:2100] \"SyncLoop (PLEG): event for pod\" pod=\"shop/cart-5f6d\"",
    "time=\"2026-12-04T09:00:00Z\" level=info msg=\"ImageCreate event name:registry.k8s.io/pause:3.9\"",
]
ERRORS = [
    "E1204 09:00:03.000000    2101 remote_image.go:180] \"PullImage from image service failed\" err=\"rpc error: code = NotFound desc = failed to pull and unpack image\" image=\"shop/cart:2.1\"",
    "E1204 09:00:04.000000    2101 kubelet.go:2855] \"Container runtime network not ready\" networkReady=\"NetworkReady=false reason:NetworkPluginNotReady message:Network plugin returns error: cni plugin not initialized\"",
    "E1204 09:00:05.000000    2101 pod_workers.go:1298] \"Error syncing pod, skipping\" err=\"failed to \\\"StartContainer\\\" for \\\"cart\\\" with CrashLoopBackOff: \\\"back-off 5m0s restarting failed container=cart pod=cart-5f6d\\\"\"",
]
SECRETS = [
    "kubeadm join 10.0.0.5:6443 --token=9a08jv.c0izixklcxtmnze7",
    "Get https://robot:gh7Kq2LmN9xZ@registry.internal/v2/: 401 Unauthorized",
    "Authorization: Bearer 8f14e45fceea167a5a36dedd4bea2543",
]
MALFORMED = ["", "{\"MESSAGE\":", "not json at all", "[1,2,3]", "{\"MESSAGE\":7}"]


def feed(seconds):
    rng = random.Random(7)
    out = sys.stdout.buffer
    end = time.monotonic() + seconds
    seq = 0
    worst = 0.0
    batch = []
    while time.monotonic() < end:
        for _ in range(1000):
            roll = rng.random()
            if roll < 0.01:
                batch.append(rng.choice(MALFORMED))
                continue
            pool = CHATTER if roll < 0.9 else ERRORS if roll < 0.97 else SECRETS
            seq += 1
            record = {"__REALTIME_TIMESTAMP": str(1796374801000000 + seq), "_HOSTNAME": "node-1",
                      "_SYSTEMD_UNIT": "kubelet.service", "SOAK_SEQ": seq,
                      "MESSAGE": rng.choice(pool), "PADDING": "x" * rng.randrange(200, 900)}
            batch.append(json.dumps(record))
        started = time.monotonic()
        out.write(("\n".join(batch) + "\n").encode())
        worst = max(worst, time.monotonic() - started)
        batch.clear()
    out.flush()
    sys.stderr.write(json.dumps({"fed_records": seq, "worst_blocked_write_s": round(worst, 3)}) + "\n")


def sink(port_file, report_file):
    """An HTTP peer: each POST's records are taken only when it answers 200; it also
    stalls, answers 503, or drops the connection without an answer, at random."""
    import http.server

    rng = random.Random(11)
    lock = threading.Lock()
    seen = set()
    state = {"lines": 0, "requests": 0, "stalls": 0, "failed": 0, "dropped": 0, "gap": 0.0}
    last = [time.monotonic()]

    def report():
        with lock:
            done = dict(state, distinct_records=len(seen), worst_gap_s=round(state["gap"], 3))
        done.pop("gap")
        with open(report_file, "w") as f:
            json.dump(done, f)

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            roll = rng.random()
            if roll < 0.02:
                state["stalls"] += 1
                time.sleep(rng.uniform(0.5, 3.0))
            elif roll < 0.05:
                state["failed"] += 1
                self.send_response(503)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            elif roll < 0.07:
                state["dropped"] += 1
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            now = time.monotonic()
            with lock:
                state["gap"] = max(state["gap"], now - last[0])
                last[0] = now
                state["requests"] += 1
                for line in body.split(b"\n"):
                    if line:
                        seen.add(json.loads(line)["SOAK_SEQ"])
                        state["lines"] += 1
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()
            report()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    with open(port_file, "w") as f:
        f.write(str(server.server_address[1]))
    server.serve_forever()


if __name__ == "__main__":
    if sys.argv[1] == "feed":
        feed(float(sys.argv[2]))
    else:
        sink(sys.argv[2], sys.argv[3])

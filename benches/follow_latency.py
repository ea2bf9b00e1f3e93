#!/usr/bin/env python3
"""Follow-mode latency: how long a line written to kubetag's stdin takes to come out tagged
on its stdout while the stream stays open. Usage: follow_latency.py KUBETAG [COUNT]"""
import json
import subprocess
import sys
import time

kubetag = sys.argv[1]
count = int(sys.argv[2]) if len(sys.argv) > 2 else 50
proc = subprocess.Popen([kubetag, "-q"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
latencies = []
for n in range(count):
    message = f'Failed to pull image "app:{n}": rpc error: code = NotFound desc = not found'
    line = json.dumps({"_SYSTEMD_UNIT": "kubelet.service", "MESSAGE": message}) + "\n"
    start = time.perf_counter()
    proc.stdin.write(line.encode())
    proc.stdin.flush()
    out = proc.stdout.readline()
    latencies.append((time.perf_counter() - start) * 1000)
    assert f"app:{n}".encode() in out, out
    time.sleep(0.01)
proc.stdin.close()
proc.wait()
latencies.sort()
print(f"follow latency over {count} lines: median {latencies[count // 2]:.2f} ms, "
      f"max {latencies[-1]:.2f} ms  (target < 50 ms)")

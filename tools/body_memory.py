#!/usr/bin/env python3
"""Peak memory under large request bodies (hardening issue, item 2).

Starts `hookflow serve` (the binary given, release build recommended) in a
temporary folder on a loopback port, then, each on a fresh server:
  A. 100 concurrent inbound calls of ~1 MB JSON each;
  B. 8 concurrent bulk uploads of ~15 MiB (10,000 events each).
Prints every answer's status count and the server's peak RSS (VmHWM).
Loopback only; bounded in count; stops its servers.

    python3 tools/body_memory.py target/release/hookflow
"""
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
from collections import Counter


def start(binary, env_extra):
    d = tempfile.mkdtemp()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOOKFLOW_")}
    env.update({"HOOKFLOW_LOG_LEVEL": "warn"}, **env_extra)
    p = subprocess.Popen([binary, "serve", "--listen", "127.0.0.1:0"], cwd=d, env=env,
                         stdout=subprocess.PIPE, text=True)
    key = None
    for line in p.stdout:
        if line.startswith("hfk_"):
            key = line.strip()
        if line.startswith("hookflow listening on http://"):
            host, port = line.strip().rsplit("/", 1)[1].split(":")
            return p, host, int(port), key
    raise SystemExit("server did not start")


def call(host, port, method, path, key, body, ctype="application/json"):
    c = http.client.HTTPConnection(host, port, timeout=120)
    c.request(method, path, body=body, headers={"Authorization": f"Bearer {key}", "Content-Type": ctype})
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, data


def peak_rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run_parallel(n, fn):
    statuses = Counter()
    lock = threading.Lock()

    def worker(i):
        try:
            s = fn(i)
        except Exception as e:  # a dropped connection counts as such
            s = type(e).__name__
        with lock:
            statuses[s] += 1

    ts = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return statuses


def inbound(binary, env_extra):
    p, host, port, key = start(binary, env_extra)
    try:
        _, lst = call(host, port, "POST", "/v1/lists", key, json.dumps({"name": "Big"}))
        flow = {"name": "Big", "trigger": {"type": "inbound", "list_id": json.loads(lst)["id"]},
                "steps": [{"id": "done", "type": "exit"}]}
        _, f = call(host, port, "POST", "/v1/flows", key, json.dumps(flow))
        fid = json.loads(f)["id"]
        _, a = call(host, port, "POST", f"/v1/flows/{fid}/activate", key, b"")
        url = json.loads(a)["inbound_url"]
        items = [{"sku": f"SKU-{i:06d}", "qty": i % 7, "note": "x" * 8} for i in range(19500)]
        base = len(json.dumps({"email": "a@example.com", "items": items}))
        print(f"  A: 100 concurrent inbound calls of {base / 1e6:.2f} MB")
        statuses = run_parallel(100, lambda i: call(
            host, port, "POST", url, key,
            json.dumps({"email": f"big{i}@example.com", "items": items}))[0])
        return statuses, peak_rss_mib(p.pid)
    finally:
        p.terminate()
        p.wait()


def bulk(binary, env_extra):
    p, host, port, key = start(binary, env_extra)
    try:
        pad = "y" * 1400
        def body(i):
            return json.dumps([{"name": "viewed", "email": f"u{i}-{n}@example.com",
                                "properties": {"pad": pad, "n": n}} for n in range(10000)])
        size = len(body(0))
        print(f"  B: 8 concurrent bulk uploads of {size / 2**20:.1f} MiB")
        statuses = run_parallel(8, lambda i: call(host, port, "POST", "/v1/events/bulk", key, body(i))[0])
        return statuses, peak_rss_mib(p.pid)
    finally:
        p.terminate()
        p.wait()


def main():
    binary = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "target/release/hookflow")
    env_extra = dict(a.split("=", 1) for a in sys.argv[2:])
    for name, scenario in (("inbound", inbound), ("bulk", bulk)):
        statuses, rss = scenario(binary, env_extra)
        print(f"  {name}: answers {dict(statuses)}, server peak RSS {rss:.0f} MiB")


if __name__ == "__main__":
    main()

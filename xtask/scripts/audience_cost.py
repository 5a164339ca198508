#!/usr/bin/env python3
"""What a maximal audience costs in memory: the release binary's RSS before and after 500 keys
of current state (history of one message), and 500 history entries (alerts, not retained),
each published to an audience of 64 users and 64 roles of 256 bytes. Prints KiB per key and
per entry. Usage: cargo build --release -p modelcast-server && python3 xtask/scripts/audience_cost.py
"""
import json, os, socket, subprocess, sys, time, urllib.request

BINARY = os.path.join(os.path.dirname(__file__), "..", "..", "target", "release", "modelcast")

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close(); return port

def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1])

def measure(args, make, n):
    port = free_port()
    server = subprocess.Popen([BINARY, "--bind", f"127.0.0.1:{port}", "--log", "warn", *args])
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close(); break
            except OSError:
                time.sleep(0.05)
        def post(body):
            req = urllib.request.Request(f"http://127.0.0.1:{port}/api/publish", data=json.dumps(body).encode(),
                                         headers={"content-type": "application/json"})
            urllib.request.urlopen(req).read()
        for i in range(20):  # warm-up: the allocator's first arenas
            post(make(10**6 + i))
        time.sleep(0.3)
        before = rss_kib(server.pid)
        for i in range(n):
            post(make(i))
        time.sleep(0.5)
        return (rss_kib(server.pid) - before) / n
    finally:
        server.terminate(); server.wait()

def name(prefix, i, j):
    head = f"{prefix}{i}-{j:03d}"
    return head + "n" * (256 - len(head))

def audience(i):
    return {"users": [name("u", i, j) for j in range(64)], "roles": [name("r", i, j) for j in range(64)]}

def download(i):
    return {"type": "download_progress_update", "audience": audience(i), "data": {
        "model_id": f"m{i}", "status": "downloading", "progress_percent": 1.0, "downloaded_mb": 1.0,
        "total_mb": 100.0, "speed_mbps": 1.0, "eta_seconds": 99.0, "can_pause": True,
        "can_resume": False, "can_cancel": True}}

def alert(i):
    return {"type": "alert", "audience": audience(i), "data": {
        "alert_id": f"a{i}", "level": "info", "title": "t", "message": "m"}}

if __name__ == "__main__":
    if not os.path.exists(BINARY):
        sys.exit(f"{BINARY} is missing: cargo build --release -p modelcast-server")
    state = measure(["--history-size", "1", "--state-max-keys", "20000"], download, 500)
    history = measure(["--history-size", "2000"], alert, 500)
    print(f"current state: {state:.1f} KiB per key; history: {history:.1f} KiB per entry")

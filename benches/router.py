#!/usr/bin/env python3
"""The router against the bare backend and against nginx, in one run.

A: the load generator straight to a trivial backend (what a perfect router adds: nothing).
B: through `managedbot router`, the bot's route in its table (from a real watch
   on a local kube-apiserver).
C: through nginx as the equivalent path proxy (secret-token check, upstream
   keep-alive): the configuration a user would write instead.

Rounds run A B C A B C ...; each figure is the median over the rounds. Two
load shapes: saturating (as many requests as the connections carry) and a
fixed rate (what a proxy adds to latency when nothing queues). Progress goes
to stderr, the Markdown report to stdout (and --out).
"""

import argparse
import hashlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PATH_SECRET = "bEnChPaThSeCrEt_0123456789abcdefghijklmnopq"
SECRET_TOKEN = "bEnChToKeNsEcReT-0123456789abcdefghijklmnop"

NGINX_CONF = """\
# The equivalent path proxy: the webhook path routed to the bot's backend
# over kept-alive upstream connections, the secret token checked.
worker_processes auto;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    client_max_body_size 1m;
    upstream bot_backend {{
        server 127.0.0.1:{backend_port};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port} reuseport;
        location = /webhook/{path_secret} {{
            if ($http_x_telegram_bot_api_secret_token != "{secret_token}") {{ return 401; }}
            proxy_pass http://bot_backend/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Telegram-Bot-Api-Secret-Token "";
            proxy_read_timeout 10s;
        }}
        location / {{ return 404; }}
    }}
}}
"""


def progress(message):
    print(f"[bench router] {message}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def update_body():
    """A real-shaped text message update of about 1 KB."""
    update = {
        "update_id": 917364521,
        "message": {
            "message_id": 48213,
            "from": {"id": 5123456789, "is_bot": False, "first_name": "Ada", "last_name": "Lovelace",
                     "username": "ada_l", "language_code": "en", "is_premium": True},
            "chat": {"id": 5123456789, "first_name": "Ada", "last_name": "Lovelace", "username": "ada_l",
                     "type": "private"},
            "date": 1764842400,
            "text": "/order 2 large pizzas, one margherita and one quattro formaggi, delivered to the "
                    "office at 5th floor, please ring twice; pay by card on delivery. Also: do you have "
                    "vegan options for next week's team lunch? We'd be about twelve people. #lunch @ada_l",
            "entities": [{"offset": 0, "length": 6, "type": "bot_command"},
                         {"offset": 270, "length": 6, "type": "hashtag"},
                         {"offset": 277, "length": 6, "type": "mention"}],
            "reply_markup": {"inline_keyboard": [[{"text": "Confirm", "callback_data": "order:confirm:48213"},
                                                  {"text": "Cancel", "callback_data": "order:cancel:48213"}]]},
        },
    }
    body = json.dumps(update, separators=(",", ":"))
    return body + " " * max(0, 1024 - len(body))


def wait_http(url, timeout=60, expect=200, method="GET", headers=None, data=None):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            request = urllib.request.Request(url, method=method, headers=headers or {}, data=data)
            with urllib.request.urlopen(request, timeout=5) as response:
                if response.status == expect:
                    return
                last = response.status
        except urllib.error.HTTPError as error:
            last = error.code
            if error.code == expect:
                return
        except OSError as error:
            last = error
        time.sleep(0.2)
    raise SystemExit(f"{url} did not answer {expect} within {timeout}s (last: {last})")


def cpu_seconds(pids):
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total / ticks


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def run_oha(oha, url, body_file, connections, duration, rate=None):
    command = [oha, "--no-tui", "--output-format", "json", "-m", "POST", "-D", body_file,
               "-H", "content-type: application/json",
               "-H", f"x-telegram-bot-api-secret-token: {SECRET_TOKEN}",
               "-c", str(connections), "-z", f"{duration}s", url]
    if rate:
        command[1:1] = ["-q", str(rate), "--latency-correction"]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def figures(result, cpu):
    summary = result["summary"]
    pct = result["latencyPercentiles"]
    codes = result.get("statusCodeDistribution", {})
    ok = sum(n for code, n in codes.items() if code.startswith("2"))
    # oha cuts the requests still in flight when the duration ends: not errors.
    failed = sum(n for code, n in codes.items() if not code.startswith("2")) + sum(
        n for kind, n in result.get("errorDistribution", {}).items() if kind != "aborted due to deadline")
    return {
        "rps": summary["requestsPerSec"],
        "p50": pct["p50"] * 1000,
        "p99": pct["p99"] * 1000,
        "p999": pct["p99.9"] * 1000,
        "errors": failed,
        "ok": ok,
        "cpu_us": (cpu / ok * 1e6) if (cpu is not None and ok) else None,
    }


def median(rows, key):
    values = [r[key] for r in rows if r[key] is not None]
    return statistics.median(values) if values else None


class Bed:
    def __init__(self, args):
        self.args = args
        self.dir = tempfile.mkdtemp(prefix="managedbot-bench-")
        self.processes = []

    def spawn(self, name, command, env=None):
        log = open(os.path.join(self.dir, f"{name}.log"), "w")
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)
        self.processes.append(process)
        return process

    def stop(self):
        for process in reversed(self.processes):
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        shutil.rmtree(self.dir, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10, help="seconds per measurement")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rate", type=int, default=2000, help="requests/s of the fixed-rate shape")
    parser.add_argument("--out", help="also write the Markdown report here")
    parser.add_argument("--hold", action="store_true",
                        help="set everything up, print the three URLs and wait (for profiling), measure nothing")
    args = parser.parse_args()

    oha = shutil.which("oha") or os.path.expanduser("~/.cargo/bin/oha")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    for tool, hint in ((oha, "cargo install oha --version 1.16.0 --locked"), (nginx, "apt-get install nginx")):
        if not os.path.exists(tool):
            raise SystemExit(f"{tool} is missing: {hint} (scripts/bench-deps.sh does both)")

    progress("building managedbot and testbed (release)")
    subprocess.run(["cargo", "build", "--release", "--locked", "--bins", "-p", "managedbot", "-p", "testbed"],
                   cwd=ROOT, check=True)
    release = os.path.join(ROOT, "target", "release")
    bin_dir = subprocess.run(["bash", os.path.join(ROOT, "tests/controlplane/build.sh")], check=True,
                             capture_output=True, text=True).stdout.strip().splitlines()[-1]
    bed = Bed(args)
    try:
        report = measure(args, bed, release, bin_dir, oha, nginx)
    finally:
        bed.stop()
    print(report)
    if args.out:
        with open(args.out, "w") as f:
            f.write(report)


def measure(args, bed, release, bin_dir, oha, nginx):
    env = dict(os.environ, MANAGEDBOT_CONTROLPLANE_BIN=bin_dir)
    progress("starting the control plane")
    kubeconfig_out = os.path.join(bed.dir, "kubeconfig-path")
    bed.spawn("controlplane", [os.path.join(release, "testbed"), "controlplane", "--kubeconfig-out", kubeconfig_out],
              env=env)
    deadline = time.time() + 120
    while not (os.path.exists(kubeconfig_out) and os.path.getsize(kubeconfig_out)):
        if time.time() > deadline:
            raise SystemExit("the control plane did not start")
        time.sleep(0.5)
    env["KUBECONFIG"] = open(kubeconfig_out).read().strip()
    kubectl = os.path.join(bin_dir, "kubectl")

    def k(*kargs, stdin=None):
        subprocess.run([kubectl, *kargs], env=env, check=True, input=stdin, text=True, capture_output=True)

    backend_port, router_port, metrics_port, nginx_port = (free_port() for _ in range(4))
    k("apply", "--server-side", "-f", os.path.join(ROOT, "crds/managedbot.yaml"))
    k("wait", "--for=condition=Established", "--timeout=60s", "crd/managedbots.managedbot.dev")
    k("create", "namespace", "bench")
    bot = {"apiVersion": "managedbot.dev/v1alpha1", "kind": "ManagedBot",
           "metadata": {"name": "bench", "namespace": "bench"},
           "spec": {"tokenSecretRef": {"name": "bench-token"},
                    "backend": {"url": f"http://127.0.0.1:{backend_port}/"}}}
    k("apply", "-f", "-", stdin=json.dumps(bot))
    routing = {"status": {"routing": {"current": {
        "pathSha256": hashlib.sha256(PATH_SECRET.encode()).hexdigest(),
        "tokenSha256": hashlib.sha256(SECRET_TOKEN.encode()).hexdigest()}}}}
    k("patch", "-n", "bench", "mbot", "bench", "--subresource=status", "--type=merge", "-p", json.dumps(routing))

    progress(f"starting the backend (:{backend_port}), the router (:{router_port}) and nginx (:{nginx_port})")
    bed.spawn("backend", [os.path.join(release, "testbed"), "bench-backend", "--listen", f"127.0.0.1:{backend_port}"])
    router = bed.spawn("router", [os.path.join(release, "managedbot"), "router", "--namespace", "bench",
                                  "--listen", f"127.0.0.1:{router_port}",
                                  "--metrics-listen", f"127.0.0.1:{metrics_port}"],
                       env=dict(env, RUST_LOG="warn"))
    conf = os.path.join(bed.dir, "nginx.conf")
    config = NGINX_CONF.format(dir=bed.dir, backend_port=backend_port, port=nginx_port,
                               path_secret=PATH_SECRET, secret_token=SECRET_TOKEN)
    with open(conf, "w") as f:
        f.write(config)
    nginx_process = bed.spawn("nginx", [nginx, "-p", bed.dir, "-c", conf])

    body = update_body()
    body_file = os.path.join(bed.dir, "update.json")
    with open(body_file, "w") as f:
        f.write(body)
    headers = {"content-type": "application/json", "x-telegram-bot-api-secret-token": SECRET_TOKEN}
    targets = {
        "A": (f"http://127.0.0.1:{backend_port}/", lambda: []),
        "B": (f"http://127.0.0.1:{router_port}/webhook/{PATH_SECRET}", lambda: [router.pid]),
        "C": (f"http://127.0.0.1:{nginx_port}/webhook/{PATH_SECRET}",
              lambda: [nginx_process.pid, *children(nginx_process.pid)]),
    }
    wait_http(f"http://127.0.0.1:{metrics_port}/readyz")
    for name, (url, _) in targets.items():
        wait_http(url, method="POST", headers=headers, data=body.encode())
    for name in "BC":
        wait_http(targets[name][0], method="POST", expect=401,
                  headers=dict(headers, **{"x-telegram-bot-api-secret-token": "wrong"}), data=body.encode())

    if args.hold:
        for name, (url, pids) in targets.items():
            print(f"{name} {url} pids {pids()}", flush=True)
        print(f"body {body_file}; secret token {SECRET_TOKEN}; Ctrl-C stops", flush=True)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
        return ""
    shapes = {"saturating": None, "fixed": args.rate}
    results = {(shape, name): [] for shape in shapes for name in targets}
    for round_ in range(1, args.rounds + 1):
        for shape, rate in shapes.items():
            for name, (url, pids) in targets.items():
                label = f"{args.rate}/s" if rate else f"{args.connections} connections"
                progress(f"round {round_}/{args.rounds}: {name} {shape} ({label}, {args.duration}s)")
                before = cpu_seconds(pids())
                result = run_oha(oha, url, body_file, args.connections, args.duration, rate)
                cpu = cpu_seconds(pids()) - before if pids() else None
                row = figures(result, cpu)
                progress(f"  {row['rps']:.0f} req/s, p50 {row['p50']:.3f} ms, p99 {row['p99']:.3f} ms, "
                         f"errors {row['errors']}")
                results[(shape, name)].append(row)
    return report(args, results, config, body)


def report(args, results, config, body):
    def fmt(value, digits=2):
        return "–" if value is None else f"{value:.{digits}f}"

    lines = [
        "## The router against the bare backend (A) and nginx (C)",
        "",
        f"{args.rounds} rounds, A B C in turn, medians; {args.duration} s per measurement, "
        f"{args.connections} connections, oha, a {len(body)}-byte update with the secret-token header.",
        "",
    ]
    medians = {}
    for shape, title in (("saturating", "Saturating"), ("fixed", f"Fixed rate, {args.rate} requests/s")):
        lines += [f"### {title}", "",
                  "| | requests/s | p50 ms | p99 ms | p99.9 ms | errors | proxy CPU µs/request |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for name, label in (("A", "A: backend direct"), ("B", "B: managedbot router"), ("C", "C: nginx")):
            rows = results[(shape, name)]
            m = {key: median(rows, key) for key in ("rps", "p50", "p99", "p999", "errors", "cpu_us")}
            medians[(shape, name)] = m
            lines.append(f"| {label} | {fmt(m['rps'], 0)} | {fmt(m['p50'], 3)} | {fmt(m['p99'], 3)} | "
                         f"{fmt(m['p999'], 3)} | {fmt(m['errors'], 0)} | {fmt(m['cpu_us'], 1)} |")
        lines.append("")
    sat = lambda name, key: medians[("saturating", name)][key]
    fixed = lambda name, key: medians[("fixed", name)][key]
    lines += [
        "### Ratios",
        "",
        f"- throughput B/C = {sat('B', 'rps') / sat('C', 'rps'):.2f}, B/A = {sat('B', 'rps') / sat('A', 'rps'):.2f}",
        f"- saturating p99 B/C = {sat('B', 'p99') / sat('C', 'p99'):.2f}",
        f"- at {args.rate}/s, added over A: B p50 +{fixed('B', 'p50') - fixed('A', 'p50'):.3f} ms, "
        f"p99 +{fixed('B', 'p99') - fixed('A', 'p99'):.3f} ms; "
        f"C p50 +{fixed('C', 'p50') - fixed('A', 'p50'):.3f} ms, p99 +{fixed('C', 'p99') - fixed('A', 'p99'):.3f} ms",
        "",
        "<details><summary>nginx.conf (C)</summary>",
        "",
        "```nginx",
        config.rstrip(),
        "```",
        "",
        "</details>",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

"""Where does a streaming upload's time go, in the gateway and in nginx? The profile behind bench/README.md
("Uploads: where the time went").

    uv run --group bench python bench/profile.py [--mib 512] [--tool strace|perf|py-spy|cpu]

Starts the upstream stub, nginx and the gateway as `bench/run` does (the gateway as the image runs it; both proxies on
CPU 1), then for each tool uploads `--mib` MiB with `curl -T` through nginx and through the gateway while the
tool watches the proxy: `cpu` (CPU seconds and context switches from /proc), `strace -c -f` (system calls),
`perf record -g` (on-CPU symbols; top 15 printed) and `py-spy record --native` (the gateway only; top frames
by own samples). strace and perf come from Debian (`strace`, `linux-perf`) and are installed when missing
and this runs as root; py-spy is in the `bench` dependency group.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import Bench, parse_args
from procs import Processes, stop_on_signals
from streams import UPLOAD

DEBIAN = {"strace": "strace", "perf": "linux-perf"}


def ensure(tool: str) -> None:
    if shutil.which(tool) or tool not in DEBIAN:
        return
    if os.geteuid() != 0:
        raise SystemExit(f"{tool} is missing: install the Debian package {DEBIAN[tool]}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", DEBIAN[tool]], check=True, env=env)


def upload(url: str, headers: list[str], body: Path) -> float:
    """One `curl -T` upload on the load CPU; MiB/s."""
    argv = ["taskset", "-c", "0", "curl", "-s", "-o", "/dev/null", "-w", "%{speed_upload}", "-T", str(body),
            "-H", "Expect:", *headers, url]  # fmt: skip
    return float(subprocess.run(argv, capture_output=True, text=True, check=True).stdout) / 2**20


def cpu_and_switches(pid: int) -> tuple[float, int]:
    ticks = sum(int(x) for x in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[11:13])
    switches = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if "ctxt_switches:" in line:
                switches += int(line.split()[1])
    return ticks / os.sysconf("SC_CLK_TCK"), switches


def watched(tool: str, pid: int, out: Path) -> subprocess.Popen[bytes] | None:
    """Start `tool` on `pid`; None for `cpu`, which reads /proc before and after."""
    argv = {
        "strace": ["strace", "-c", "-f", "-p", str(pid), "-o", str(out)],
        "perf": ["perf", "record", "-F", "999", "-g", "-p", str(pid), "-o", str(out)],
        "py-spy": [str(Path(sys.executable).parent / "py-spy"), "record", "--native", "-r", "500", "-f", "raw",
                   "-p", str(pid), "-o", str(out)],
    }.get(tool)  # fmt: skip
    if argv is None:
        return None
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.5)  # attached
    return proc


def report(tool: str, out: Path) -> str:
    if tool == "strace":
        return "\n".join(out.read_text().splitlines()[:14])
    if tool == "perf":
        done = subprocess.run(["perf", "report", "-i", str(out), "--no-children", "--sort", "dso,sym", "--stdio",
                               "-g", "none"], capture_output=True, text=True)  # fmt: skip
        return "\n".join([line for line in done.stdout.splitlines() if "%" in line and not line.startswith("#")][:15])
    own: collections.Counter[str] = collections.Counter()
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        own[stack.split(";")[-1]] += int(count)
    total = sum(own.values()) or 1
    return "\n".join(f"{100 * n / total:5.1f}% {frame[:110]}" for frame, n in own.most_common(15))


def profile(bench: Bench, tool: str, body: Path, workdir: Path) -> None:
    targets = {"nginx": bench.paths["nginx"], "gateway": bench.paths["gateway"]}
    pids = {"nginx": nginx_worker(bench), "gateway": bench.gateway.pid if bench.gateway else 0}
    for name, target in targets.items():
        if tool == "py-spy" and name == "nginx":
            continue
        out = workdir / f"{tool}-{name}.out"
        before = cpu_and_switches(pids[name])
        proc = watched(tool, pids[name], out)
        speed = upload(target.url(UPLOAD), target.header_args(), body)
        if proc is not None:
            proc.send_signal(2)
            proc.wait(timeout=120)
        cpu, switches = (a - b for a, b in zip(cpu_and_switches(pids[name]), before, strict=True))
        print(f"== {tool} {name}: {speed:.0f} MiB/s, {cpu:.2f} CPU s, {switches} context switches")
        if proc is not None:
            print(report(tool, out))


def nginx_worker(bench: Bench) -> int:
    master = next(p for p in bench.procs.running if "nginx" in " ".join(map(str, p.args)))
    children = subprocess.run(["pgrep", "-P", str(master.pid)], capture_output=True, text=True).stdout.split()
    return int(children[0]) if children else master.pid


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--mib", type=int, default=512)
    parser.add_argument("--tool", choices=["cpu", "strace", "perf", "py-spy"], action="append")
    args = parser.parse_args()
    tools = args.tool or ["cpu", "strace", "perf", "py-spy"]
    for tool in tools:
        ensure(tool)
    stop_on_signals()
    with tempfile.TemporaryDirectory(prefix="zgw-profile-") as tmp, Processes(Path(tmp)) as procs:
        workdir = Path(tmp)
        body = workdir / "body.bin"
        with body.open("wb") as f:
            f.truncate(args.mib * 2**20)
        bench = Bench(parse_args([]), workdir, procs)
        bench.start_upstream()
        bench.start_nginx()
        bench.start_gateway()
        bench.check_paths()
        for tool in tools:
            profile(bench, tool, body, workdir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

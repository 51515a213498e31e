"""wrk load: the Lua scripts (POST /task bodies) and one run."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

from bench.measure import WrkResult, parse_wrk
from bench.procs import BenchError

USERS = 1_000_000
THREADS = 1
CONNECTIONS = 32

_HEADER = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
"""

# Every request for a user drawn at random among USERS: fresh users, all admitted
# (a user sees about one request per run, far under 20 per minute).
RANDOM_USERS = (
    _HEADER
    + """
math.randomseed({seed})
request = function()
  return wrk.format(nil, nil, nil, '{{"user_id":"{prefix}' .. math.random(1, {users}) .. '"}}')
end
"""
)

# Every request for one user: after the first 20 they are refused.
ONE_USER = (
    _HEADER
    + """
wrk.body = '{{"user_id":"{user}"}}'
"""
)

# A new user for every request, "m1", "m2", ...: after `limit` responses the thread
# stops and writes `marker`, and the harness interrupts wrk (which otherwise waits out
# its -d duration).
DISTINCT_USERS = (
    _HEADER
    + """
local sent, received = 0, 0
request = function()
  sent = sent + 1
  return wrk.format(nil, nil, nil, '{{"user_id":"m' .. sent .. '"}}')
end
response = function(status, headers, body)
  received = received + 1
  if received == {limit} then
    local f = io.open("{marker}", "w")
    f:write(tostring(sent))
    f:close()
    wrk.thread:stop()
  end
end
"""
)


def write_script(directory: Path, name: str, text: str) -> Path:
    path = directory / f"{name}.lua"
    path.write_text(text)
    return path


def random_users_script(
    directory: Path, seed: int = 1, users: int = USERS, prefix: str = "u"
) -> Path:
    """Users "<prefix>1" to "<prefix><users>", drawn at random (the same sequence for
    the same ``seed``)."""
    text = RANDOM_USERS.format(seed=seed, users=users, prefix=prefix)
    return write_script(directory, f"random_users_{prefix}{seed}", text)


def one_user_script(directory: Path, user: str = "hot") -> Path:
    return write_script(directory, "one_user", ONE_USER.format(user=user))


def distinct_users_script(directory: Path, limit: int, marker: Path) -> Path:
    return write_script(
        directory, "distinct_users", DISTINCT_USERS.format(limit=limit, marker=marker)
    )


def wrk_binary() -> str:
    binary = shutil.which("wrk")
    if binary is None:
        raise BenchError("wrk is not installed (apt-get install wrk)")
    return binary


def command(url: str, script: Path, duration: float) -> list[str]:
    return [
        wrk_binary(),
        f"-t{THREADS}",
        f"-c{CONNECTIONS}",
        f"-d{max(1, round(duration))}s",
        "--latency",
        "-s",
        str(script),
        url,
    ]


def run(url: str, script: Path, duration: float) -> tuple[WrkResult, str]:
    """One wrk run: ``wrk -t1 -c32 -dNs --latency -s script url``."""
    done = subprocess.run(
        command(url, script, duration),
        capture_output=True,
        text=True,
        timeout=duration + 60,
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    return parse_wrk(done.stdout), done.stdout


def run_until_marker(
    url: str, script: Path, marker: Path, max_duration: float
) -> tuple[WrkResult, str, float]:
    """Run wrk until its script writes ``marker`` (or ``max_duration`` passes), then
    interrupt it so it prints its figures. Returns them and the seconds it ran."""
    started = time.monotonic()
    proc = subprocess.Popen(
        command(url, script, max_duration),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    while proc.poll() is None and not marker.exists():
        time.sleep(0.1)
    elapsed = time.monotonic() - started
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    if proc.returncode not in (0, -signal.SIGINT):
        raise BenchError(f"wrk failed ({proc.returncode}): {err or out}")
    return parse_wrk(out), out, elapsed

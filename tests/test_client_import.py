"""The client needs httpx and pydantic only: in a Python where ``redis``, ``sanic`` and
``saq`` cannot be imported (a meta path finder refuses them, as if not installed),
``taskhub.client`` imports, makes its clients and reads the API's models; and importing
the ``taskhub`` package alone imports none of the kernel."""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap

import taskhub
from tests.support.configs import ROOT

BLOCKER = """
import sys

BLOCKED = ("redis", "sanic", "saq", "hiredis", "uvloop")


class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
        return None


sys.meta_path.insert(0, NotInstalled())
"""


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BLOCKER + textwrap.dedent(code)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_client_imports_without_redis_or_sanic() -> None:
    done = run_python(
        """
        import taskhub.client as client

        with client.Client("http://127.0.0.1:1/prefix", api_key="k" * 16) as c:
            assert str(c.base_url) == "http://127.0.0.1:1/prefix"
        client.AsyncClient("http://127.0.0.1:1")
        client.Job.model_json_schema()
        try:
            import redis
        except ModuleNotFoundError:
            pass
        else:
            raise AssertionError("the blocker let redis in")
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        assert not loaded, loaded
        print("ok")
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_the_blocker_blocks() -> None:
    """The server's modules do need them: the finder above is what keeps them out."""
    done = run_python("import taskhub.limits.admission")
    assert done.returncode != 0 and "blocked by the test" in done.stderr


def test_the_package_imports_its_public_names_on_first_use() -> None:
    done = run_python(
        """
        import taskhub

        kernel = sorted(m for m in sys.modules if m.startswith("taskhub."))
        assert kernel == [], kernel
        from taskhub import JobStatus, __version__
        assert JobStatus.COMPLETE == "complete" and __version__
        assert "JobStatus" in dir(taskhub)
        try:
            taskhub.no_such_name
        except AttributeError as exc:
            assert "no_such_name" in str(exc)
        print("ok")
        """
    )
    assert done.returncode == 0, done.stderr


def test_every_public_name_resolves_to_its_origin() -> None:
    for module, names in taskhub._ORIGINS.items():
        for name in names:
            assert getattr(taskhub, name) is getattr(importlib.import_module(module), name)
    assert sorted(taskhub._ORIGIN) == sorted(taskhub.__all__)


def test_taskhub_help_does_not_import_the_client() -> None:
    """``taskhub submit`` imports the client (and httpx) when it runs, not for --help."""
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys\n"
            "from taskhub.cli.main import main\n"
            "assert main(['--help']) == 0\n"
            "assert main(['submit', '--help']) == 0\n"
            "loaded = [m for m in ('httpx', 'taskhub.client') if m in sys.modules]\n"
            "assert not loaded, loaded\n",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "taskhub submit" not in done.stderr and "submit" in done.stdout

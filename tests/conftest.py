"""Suite set-up: the browser of the dashboard tests, so that ``python -m pytest -q tests`` (the
README's command, which ``.ci/run`` calls) passes on a fresh Debian/Ubuntu machine.

``tests/test_dashboard.py`` drives a real headless Chromium (``/usr/bin/chromium`` and
``/usr/bin/chromedriver``, Debian's ``chromium`` and ``chromium-driver`` packages): a system
program that pip cannot provide. When those tests are collected and the browser is missing, this
installs it once through the system package manager, as ``.ci/run`` does, if it can without a
password (running as root, or passwordless ``sudo -n``), and says so on the terminal. Otherwise,
or with ``GEMMASCOPE_NO_APT=1``, it installs nothing and the dashboard tests fail with the
command to run. Nothing happens when the browser is present or no dashboard test is selected.

Compiled programs: every process of the session (this one, the subprocesses the tests start, the
notebooks' kernels) shares one JAX persistent compilation cache in a temporary folder made for the
session and removed at its end (``JAX_COMPILATION_CACHE_DIR``, unless it is already set). The
toy trainer compiles the same programs in many runs, in this process and in killed-and-rerun
subprocesses; a later compilation of the same program loads the executable the first one wrote.
The executables are the ones XLA compiles anyway, so results, bitwise ones included, are the same;
the toy-training test files take a tenth less CPU time (measured: 511 -> 458 s for 11 files).

``load_lm_once``: a test that runs the pipeline in-process several times on the same embedded LM
(generation, the online source, evaluation) loads it once per test module instead of once per
call. Only the loading is shared (the LM object is read-only); what the pipeline computes from
it is unchanged, and the loading itself is tested on its own (tests/test_lm_gguf.py,
tests/test_gemma3_embedded.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
APT_PACKAGES = ("chromium", "chromium-driver")
NO_APT_ENV = "GEMMASCOPE_NO_APT"
HINT = f"apt-get install -y {' '.join(APT_PACKAGES)}"
JAX_CACHE_ENV = "JAX_COMPILATION_CACHE_DIR"
_JAX_CACHE: str | None = None  # the session's cache folder when this conftest made it


def pytest_configure(config):
    """The session's JAX compilation cache (module doc), set before JAX is imported."""
    global _JAX_CACHE
    if os.environ.get(JAX_CACHE_ENV):
        return
    _JAX_CACHE = tempfile.mkdtemp(prefix="gemmascope-tests-jax-cache-")
    os.environ[JAX_CACHE_ENV] = _JAX_CACHE
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"  # the toy's programs compile in < 1 s
    if "jax" in sys.modules:  # imported before this hook (a plugin): set its config directly
        import jax

        jax.config.update("jax_compilation_cache_dir", _JAX_CACHE)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def pytest_unconfigure(config):
    if _JAX_CACHE is not None:
        shutil.rmtree(_JAX_CACHE, ignore_errors=True)


def browser_plan(
    exists=os.path.exists, euid: int | None = None, which=shutil.which, run=subprocess.run, env=os.environ
) -> tuple[list[list[str]] | None, str]:
    """What to do about the browser: ``(None, reason)`` to do nothing, or ``(commands, message)``
    to install it (``apt-get update`` then ``apt-get install``, prefixed by ``sudo -n`` when not
    root)."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not exists(p)]
    if not missing:
        return None, "present"
    if env.get(NO_APT_ENV):
        return None, f"{', '.join(missing)} missing and {NO_APT_ENV} is set: install it with `{HINT}`"
    if not which("apt-get"):
        return None, (
            f"{', '.join(missing)} missing and no apt-get here: install Chromium and its driver at "
            f"{CHROMIUM}, {CHROMEDRIVER}"
        )
    euid = os.geteuid() if euid is None else euid
    prefix: list[str] = []
    if euid != 0:
        if not which("sudo") or run(["sudo", "-n", "true"], capture_output=True).returncode != 0:
            return None, f"{', '.join(missing)} missing, not root, no passwordless sudo: run `sudo {HINT}`"
        prefix = ["sudo", "-n"]
    cmds = [
        prefix + ["apt-get", "update", "-q"],
        prefix + ["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "-q", *APT_PACKAGES],
    ]
    return cmds, (
        f"installing {' '.join(APT_PACKAGES)} with apt-get for the dashboard tests ({', '.join(missing)} missing)"
    )


def ensure_browser(write=print, run=subprocess.run, **kw) -> bool:
    """Installs the browser when :func:`browser_plan` says so; True when it is present after."""
    cmds, msg = browser_plan(run=run, **kw)
    if cmds is None:
        if msg != "present":
            write(f"conftest: {msg}")
        return msg == "present"
    write(f"conftest: {msg} (set {NO_APT_ENV}=1 to skip)")
    for cmd in cmds:
        r = run(cmd, capture_output=True, text=True, timeout=1800)
        if r.returncode != 0:
            tail = (r.stderr or r.stdout or "").strip().splitlines()[-3:]
            write(f"conftest: `{' '.join(cmd)}` failed ({r.returncode}): {' | '.join(tail)}")
            return False
    ok = os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)
    write(
        f"conftest: {'installed' if ok else 'apt-get finished but the browser is still missing at'} "
        f"{CHROMIUM}, {CHROMEDRIVER}"
    )
    return ok


def pytest_collection_finish(session):
    if not any(os.path.basename(str(item.fspath)) == "test_dashboard.py" for item in session.items):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    ensure_browser(write=(lambda s: reporter.write_line(s)) if reporter else print)


@pytest.fixture(scope="module")
def lm_memo() -> dict:
    """``{(checkpoint, dtype): LM}`` loaded by :func:`load_lm_once` in this test module."""
    return {}


@pytest.fixture
def load_lm_once(lm_memo, monkeypatch):
    """``gemmascope.lm.loading.load_lm`` (which every in-process LM user calls through
    ``LMActivations``) returns the module's already-loaded LM for the same checkpoint and dtype."""
    from gemmascope.lm import loading

    real = loading.load_lm

    def load_lm(checkpoint: str = "embedded", dtype: str = "float32", log=None):
        key = (checkpoint or "embedded", dtype)
        if key not in lm_memo:
            lm_memo[key] = real(checkpoint, dtype, log=log)
        return lm_memo[key]

    monkeypatch.setattr(loading, "load_lm", load_lm)
    return load_lm

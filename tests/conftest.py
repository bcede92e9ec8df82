import os

# One thread per process (also for the CLI and torchrun subprocesses the tests start): these
# tests run many small operators, for which a second thread only adds waiting, and on a shared
# 2-core machine two threads stall each other (docs/performance.md).
os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def _user_cache(tmp_path_factory):
    """What the code keeps in the user cache ($XDG_CACHE_HOME: decoded image folders) goes to a
    temporary folder during the tests, never to the real one."""
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("user-cache"))
    yield
    if old is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = old


def _provide(session) -> None:
    """Obtain the Omniglot files (omniglot_data.provide); without them (no copy, no network)
    stop with one line instead of an error per test."""
    from omniglot_data import provide

    from metagrad.errors import DataError

    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    say = reporter.write_line if reporter is not None else print
    try:
        session.config.stash[DATA] = provide(say)
    except DataError as e:
        pytest.exit(str(e), returncode=pytest.ExitCode.USAGE_ERROR)


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session):
    """Under pytest-xdist the controller, which collects nothing, obtains the files once before
    the workers start (a worker that stopped the run would crash it instead of saying why)."""
    if session.config.pluginmanager.has_plugin("dsession") and not session.config.option.collectonly:
        _provide(session)


def pytest_collection_finish(session):
    """In one process, or in an xdist worker: obtain the files before any test runs, if a
    collected test needs them (in a worker the controller already has, so this only finds them)."""
    if session.config.option.collectonly or not any("shared_data" in item.fixturenames for item in session.items):
        return
    _provide(session)


DATA = pytest.StashKey[Path]()


@pytest.fixture(scope="session")
def shared_data(pytestconfig) -> Path:
    """The folder holding omniglot/ with the real archives (see omniglot_data.py)."""
    return pytestconfig.stash[DATA]


@pytest.fixture(scope="session")
def omniglot_cache(tmp_path_factory) -> Path:
    """One preprocessing cache for the small archives (small_omniglot.py), shared by the session."""
    return tmp_path_factory.mktemp("omniglot-small-cache")

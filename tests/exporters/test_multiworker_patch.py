"""multiworker's one patch (signal.raise_signal) and its SIGTERM handler are visible and put back by close()."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("opentelemetry.sdk")

SCRIPT = textwrap.dedent(
    """
    import signal, sys
    from traced_transport.exporters import multiworker
    from traced_transport.exporters.multiworker import signals

    original = signal.raise_signal
    assert not multiworker.raise_signal_patched()
    worker = multiworker.start_worker(sys.argv[1], interval=3600)
    assert multiworker.raise_signal_patched()
    assert signal.raise_signal.__wrapped__ is original
    assert signal.getsignal(signal.SIGTERM) == worker._on_sigterm
    assert worker.close()
    assert not multiworker.raise_signal_patched()
    assert signal.raise_signal is original
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL

    # removable by hand too, and someone else's replacement is left alone
    worker2 = multiworker.start_worker(sys.argv[1], interval=3600)
    assert multiworker.unpatch_raise_signal() and signal.raise_signal is original
    multiworker.start_worker(sys.argv[1], interval=3600)  # the same worker: idempotent, no new patch
    def theirs(n):
        return original(n)
    signals.patch_raise_signal(lambda n: None)
    signal.raise_signal = theirs
    assert not multiworker.unpatch_raise_signal() and signal.raise_signal is theirs
    worker2.close()
    print("ok")
    """
)


def test_close_restores_raise_signal_and_sigterm(tmp_path):
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_signals_false_patches_nothing(tmp_path):
    script = (
        "import signal, sys\n"
        "from traced_transport.exporters import multiworker\n"
        "w = multiworker.start_worker(sys.argv[1], interval=3600, signals=False)\n"
        "assert not multiworker.raise_signal_patched()\n"
        "assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL\n"
        "w.close(); print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"

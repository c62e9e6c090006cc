"""The repository explains itself from its own files.

- every `docs/...` path named in code, configs or markdown exists, and every `docs/<page>.md, '<Section>'`
  citation names a heading of that page;
- every relative markdown link (and its `#anchor`) resolves;
- every `--set key=value` in a `python -m jobs.<entry>` example is a key that entry accepts;
- no file speaks of how the project is developed (work tracking, internal notes, machine paths).
"""

from __future__ import annotations

import dataclasses
import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SKIP_DIRS = {".git", ".venv", "models", "runs", "wandb", "__pycache__", ".pytest_cache", ".ruff_cache",
             "node_modules", "build", "dist"}
SUFFIXES = {".py", ".md", ".toml", ".sh", ".txt", ".cfg", ".yml", ".yaml", ".json", ".ini"}
THIS_FILE = Path(__file__).resolve()


def repo_files() -> list[Path]:
    """Source, config and documentation files of the checkout (untracked ones included)."""
    out = []
    stack = [ROOT]
    while stack:
        folder = stack.pop()
        for path in sorted(folder.iterdir()):
            if path.is_dir():
                if path.name not in SKIP_DIRS and not path.name.endswith(".egg-info") and not path.is_symlink():
                    stack.append(path)
            elif path.suffix in SUFFIXES or path.name in ("Makefile", "run"):
                out.append(path)
    return out


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


DOC_PATH = re.compile(r"(?<![\w/])docs/[\w./-]*?\.(?:md|png|html|json)\b")
DOC_SECTION = re.compile(r"(?<![\w/])docs/([\w./-]+?\.md),\s*(?:section\s+)?'([^']+)'")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
LINK_SECTION = re.compile(r"\]\(([\w./-]+\.md)\),\s*'([^']+)'")


def headings(page: Path) -> list[str]:
    lines = page.read_text().splitlines()
    out, fenced = [], False
    for line in lines:
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            out.append(line.lstrip("#").strip())
    return out


def prose(markdown: str) -> str:
    """The text outside code: fenced blocks and inline `code` spans removed."""
    return re.sub(r"`[^`\n]*`", "", re.sub(r"^```.*?^```", "", markdown, flags=re.S | re.M))


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.lower().replace("`", ""))
    return text.replace(" ", "-")


def test_every_docs_path_named_in_the_repo_exists() -> None:
    missing = []
    for path in repo_files():
        if path == THIS_FILE:
            continue
        for lineno, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for ref in DOC_PATH.findall(line):
                if not (ROOT / ref).is_file():
                    missing.append(f"{_rel(path)}:{lineno}: {ref}")
    assert not missing, "references to docs that are not in the repository:\n" + "\n".join(missing)


def test_every_cited_docs_section_is_a_heading_of_that_page() -> None:
    wrong = []
    for path in repo_files():
        if path == THIS_FILE:
            continue
        text = path.read_text(errors="replace")
        cites = [(f"docs/{page}", section) for page, section in DOC_SECTION.findall(text)]
        if path.suffix == ".md":
            cites += [(_rel((path.parent / page).resolve()), section) for page, section in LINK_SECTION.findall(text)]
        for page, section in cites:
            target = ROOT / page
            if target.is_file() and section not in headings(target):
                wrong.append(f"{_rel(path)}: {page}, '{section}' (headings: {headings(target)})")
    assert not wrong, "citations of sections that do not exist:\n" + "\n".join(wrong)


def test_markdown_links_and_anchors_resolve() -> None:
    broken = []
    for path in repo_files():
        if path.suffix != ".md":
            continue
        for target in LINK.findall(prose(path.read_text())):
            if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            dest = (path.parent / file_part).resolve() if file_part else path
            if not dest.exists():
                broken.append(f"{_rel(path)}: ({target}) -> no such file")
            elif anchor and dest.suffix == ".md" and anchor not in {slug(h) for h in headings(dest)}:
                broken.append(f"{_rel(path)}: ({target}) -> no heading with anchor #{anchor}")
    assert not broken, "broken links:\n" + "\n".join(broken)


# Patterns assembled from pieces so that this file does not match them itself.
DEVELOPMENT_TALK = [
    (re.compile(r"\bissue\s*#?\s*\d+", re.I), "a work-tracking issue number"),
    (re.compile(re.escape("(" + "is" + "sue") + ":", re.I), "a work-tracking note"),
    (re.compile(r"\bTODO\((?:" + "lead|session|helper" + r")\)"), "a TODO addressed to the team, not an owner area"),
    (re.compile(r"\bsession\s+\d+\b", re.I), "a development session"),
    (re.compile(r"\bhelper[- ]\d+\b", re.I), "a development helper"),
    (re.compile(r"\bh\d\d-[a-z]+\b"), "a development branch name"),
    (re.compile(r"\bticket\b", re.I), "a ticket"),
    (re.compile("(?:" + "|".join(["PAPERS", "STYLE", "DESIGN", "ANCHORS"]) + r")\.md\b"),
     "a note that is not in the repo"),
    (re.compile(r"VLLM_CPU_(?:NOTES|SPEED)|GPU_MEASUREMENTS"), "a note that is not in the repo"),
    (re.compile("/" + r"work/(?:shared|coord|main|wt)\b"), "a path on the development machine"),
]


def test_nothing_speaks_of_how_the_project_is_developed() -> None:
    found = []
    for path in repo_files():
        if path == THIS_FILE:
            continue
        for lineno, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for pattern, what in DEVELOPMENT_TALK:
                match = pattern.search(line)
                if match:
                    found.append(f"{_rel(path)}:{lineno}: {match.group(0)!r} ({what})")
    assert not found, "the repository must explain itself, not its development:\n" + "\n".join(found)


def test_the_development_talk_patterns_catch_what_they_are_for() -> None:
    notes = ["".join(parts) + ".md" for parts in (("PAP", "ERS"), ("STY", "LE"))]
    samples = ["see " + "issue 18", "(" + "is" + "sue: exact interchange)", "TODO(" + "lead): x", "h" + "18-userview",
               "/".join(["", "work", "sha" + "red", "docs"]), *notes]
    for sample in samples:
        assert any(p.search(sample) for p, _ in DEVELOPMENT_TALK), sample
    for fine in ["TODO(kernels): sweep", "a pytest session-scoped fixture", "ray session dir", "issues a request",
                 "_STYLE = 'css'"]:
        assert not any(p.search(fine) for p, _ in DEVELOPMENT_TALK), fine


# ---------------------------------------------------------------------------------------------- --set examples

@cache
def valid_keys(entry: str) -> frozenset[str]:
    """Every key `--set` accepts for some recipe of `entry`, variants' own fields included."""
    from jobs.recipes import recipes_for

    keys: set[str] = set()
    for make in recipes_for(entry).values():
        _collect_keys(make(), "", keys)
    return frozenset(keys)


def _collect_keys(config, prefix: str, keys: set[str]) -> None:
    from typing import get_type_hints

    hints = get_type_hints(type(config))
    for field in dataclasses.fields(config):
        key = prefix + field.name
        keys.add(key)
        value = getattr(config, field.name)
        registry = getattr(hints[field.name], "registry", None)
        if callable(registry):  # a variant field: every registered variant's fields are settable after `key=name`
            for cls in registry().values():
                keys.update(f"{key}.{f.name}" for f in dataclasses.fields(cls))
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            _collect_keys(value, key + ".", keys)


COMMAND = re.compile(r"-m jobs\.(pretrain|rl|main|train_reward_model)\b(.*)")
SET = re.compile(r"--set[ =]([\w.]+)=")


def test_set_examples_use_keys_that_exist() -> None:
    wrong = []
    for path in repo_files():
        if path == THIS_FILE:
            continue
        lines = path.read_text(errors="replace").splitlines()
        for lineno, line in enumerate(lines, 1):
            match = COMMAND.search(line)
            if not match or (lineno < len(lines) and lines[lineno].startswith("error:")):
                continue  # no command, or an example of the error a wrong key gives
            entry = "rl" if match.group(1) == "main" else match.group(1)
            for key in SET.findall(match.group(2)):
                if key not in valid_keys(entry):
                    wrong.append(f"{_rel(path)}:{lineno}: jobs.{match.group(1)} --set {key}=...")
    assert not wrong, "examples with keys the entry point does not have:\n" + "\n".join(wrong)


@pytest.mark.parametrize("entry,key,ok", [
    ("rl", "loop.num_steps", True), ("rl", "reward.url", True),
    ("pretrain", "train.num_steps", False), ("pretrain", "loop.num_steps", True),
])
def test_valid_keys_know_variants_and_reject_unknown_keys(entry: str, key: str, ok: bool) -> None:
    assert (key in valid_keys(entry)) is ok

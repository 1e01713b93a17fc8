"""History belongs in commit messages: no issue numbers, dates or "we measured" in the code or the docs.

Scans every text file under src/, README.md and docs/*.md (the generated results page included: it shows the
machine a JSON records, never its date) and lists each offending file:line.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PATTERNS = {
    "issue number": re.compile(r"issue[- ]?#?\d+", re.IGNORECASE),
    "date": re.compile(r"\b(?:19|20)\d{2}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])\b"),
    "first-person measurement": re.compile(r"\b(?:I|we) measured\b", re.IGNORECASE),
}
SKIP_PARTS = {"__pycache__"}


def scanned_files() -> list[Path]:
    files = [p for p in (ROOT / "src").rglob("*") if p.is_file()
             and not SKIP_PARTS & set(p.parts) and not any(part.endswith(".egg-info") for part in p.parts)]
    files += [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    return sorted(p for p in files if p.is_file())


def offenders() -> list[str]:
    found = []
    for path in scanned_files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # binary data files (weights, statistics) carry no prose
        for number, line in enumerate(text.splitlines(), 1):
            for what, pattern in PATTERNS.items():
                if pattern.search(line):
                    found.append(f"{path.relative_to(ROOT)}:{number}: {what}: {line.strip()[:100]}")
    return found


def test_patterns_catch_what_they_should():
    assert PATTERNS["issue number"].search("the Issue-4 target")
    assert PATTERNS["issue number"].search("see issue #12")
    assert PATTERNS["date"].search("re-measured on 2026-11-24")
    assert not PATTERNS["date"].search("sizes 1024-2048-4096")
    assert PATTERNS["first-person measurement"].search("We measured 3x")
    assert not PATTERNS["first-person measurement"].search("what is measured")


def test_no_history_in_code_or_docs():
    found = offenders()
    assert not found, "history belongs in commit messages, not in the project:\n" + "\n".join(found)

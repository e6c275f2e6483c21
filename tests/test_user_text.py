"""What users read speaks of the package only: no design-document sections, no issue numbers.

Docstrings (``help()`` shows them), comments, CLI help and plot labels all live in the source of
fastnewton/, kernels/ and bench/; the README and docs/performance/ are read as they are.
"""
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
USER_FACING = ["README.md", "pyproject.toml", "fastnewton", "kernels", "bench", "docs"]
TEXT_SUFFIXES = {".py", ".md", ".toml", ".txt", ".json", ".csv"}
# The design document's name and section signs, "issue 7" / "issue #7" / "issues 3 and 4",
# and the names of the developers' own notes.
INTERNAL = re.compile(r"\bSPEC\b|§|\bissues? #?\d|\bSTYLE\.md\b|\bCOMMON\.md\b")


def _files():
    # What a clone holds (git's tracked files), so that generated outputs lying around do not count.
    import subprocess

    try:
        listed = subprocess.run(["git", "ls-files", "-z", *USER_FACING], cwd=REPO, capture_output=True,
                                check=True).stdout.decode().split("\0")
        yield from (REPO / name for name in sorted(filter(None, listed))
                    if (REPO / name).suffix in TEXT_SUFFIXES or name in USER_FACING)
        return
    except (OSError, subprocess.CalledProcessError):
        pass  # not a git checkout: every file under the folders
    for entry in USER_FACING:
        path = REPO / entry
        if path.is_file():
            yield path
        elif path.is_dir():
            yield from (file for file in sorted(path.rglob("*"))
                        if file.is_file() and file.suffix in TEXT_SUFFIXES and "__pycache__" not in file.parts
                        and "results" not in file.relative_to(REPO).parts)


def test_the_pattern_catches_what_it_is_for():
    for text in ("see SPEC §3", "as issue 7 asks", "(issue #12)", "issues 3 and 4", "§2", "STYLE.md"):
        assert INTERNAL.search(text), text
    for text in ("specification", "spec.loader", "an issue with b", "tissue 3"):
        assert not INTERNAL.search(text), text


@pytest.mark.parametrize("path", list(_files()), ids=lambda path: str(path.relative_to(REPO)))
def test_no_internal_references_in_what_users_read(path):
    found = [f"{path.relative_to(REPO)}:{number}: {line.strip()}"
             for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
             if INTERNAL.search(line)]
    assert not found, "\n".join(found)

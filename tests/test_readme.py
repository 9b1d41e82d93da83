"""README.md's commands are the ones CI runs: the quick start's two steps and the follow-up
training commands that .ci/run executes as written (so neither can drift from the other)."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _commands(text: str) -> list[str]:
    """Shell lines with continuations joined, comments and surrounding blanks removed."""
    joined = re.sub(r"\\\n\s*", " ", text)
    lines = [re.sub(r"\s+#.*$", "", line).strip() for line in joined.splitlines()]
    return [" ".join(line.split()) for line in lines if line and not line.startswith("#")]


def _ci_follow_ups() -> list[str]:
    ci = (ROOT / ".ci" / "run").read_text()
    block = ci.split("# README's follow-up commands", 1)[1].split("\n)\n", 1)[0]
    return [c for c in _commands(block.split("\n", 1)[1]) if c not in ("(", "source .venv/bin/activate")]


def test_ci_runs_the_quick_start():
    readme = (ROOT / "README.md").read_text()
    ci = _commands((ROOT / ".ci" / "run").read_text())
    assert "bash scripts/setup && .venv/bin/mpt-train" in readme
    assert ".venv/bin/python -m pytest -q" in readme
    assert "bash scripts/setup" in ci and ".venv/bin/mpt-train" in ci
    assert any(c.startswith(".venv/bin/python -m pytest -q") for c in ci)


def test_ci_follow_ups_are_readme_commands_as_written():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Training, generating, benchmarking", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    documented = _commands(section)
    follow_ups = _ci_follow_ups()
    assert len(follow_ups) == 3, follow_ups
    for command in follow_ups:
        assert command in documented, command

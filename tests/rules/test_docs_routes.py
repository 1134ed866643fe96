"""docs/routes.md is executable: every example in it is checked against the real code.

- Every ```yaml block is compiled with `compile_rules(text, "docs/routes.md", region=...)`,
  padded so that an error names the block's own line in docs/routes.md.
  Markers in the block's leading comment lines:
    `# fragment`               the block is items of `routes:`; it is compiled inside the
                               block marked <!-- fragment-context --> (its sessions, lists
                               and schedules), in place of that file's routes and default
    `# error: <text>`          the block must fail to compile, with <text> in the errors
    `# warning: <text>`        the block compiles with an unreachable-route warning holding
                               <text> (every other block must compile without warnings)
    `SWITCHBOARD_DEFAULT_REGION=XX` in those comments: compile with region XX (else US)
  A yaml block that is a list of sample calls (or `calls:`) is a sample calls file: it must
  load, and a `$ switchboard test` example must run it.
- A block preceded by `<!-- file: NAME -->` is also a file that other examples use: list
  files (next to docs/routes.md for the compile checks) and the routes, calls and header
  files of the commands.
- Every `$ switchboard ...` line in a ```sh block is run with `app.cli.main.main` in a temporary
  directory holding those files. `NAME=value` words before it are set in the environment,
  `> FILE` writes standard output to FILE, and a trailing `# exit status N` is the expected
  exit code (0 otherwise). Every non-blank line shown after the command, other than `...`,
  must appear in its standard output or error, in order within each (12-hex-digit rules
  versions may differ).
"""

from __future__ import annotations

import os
import re
import shlex
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from app.cli.main import main
from app.cli.routetest import load_samples
from app.rules import RulesError, compile_rules, load_rules

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "routes.md"
DOC_NAME = "docs/routes.md"
COMMANDS = ("check", "explain", "test", "schema")

_FENCE = re.compile(r"^```(\S*)\s*$")
_DIRECTIVE = re.compile(r"^<!--\s*(.*?)\s*-->$")
_REGION = re.compile(r"SWITCHBOARD_DEFAULT_REGION=([A-Za-z]{2})\b")
_EXIT = re.compile(r"\s+#\s*exit status (\d+)\s*$")
_VERSION = re.compile(r'\bversion("?:?\s*"?)[0-9a-f]{12}\b')


@dataclass(frozen=True)
class Block:
    index: int
    lang: str
    line: int
    """Line of the block's first content line in docs/routes.md."""
    text: str
    file: str | None = None
    context: bool = False

    @property
    def id(self) -> str:
        return f"{self.lang}@line{self.line}"

    def markers(self) -> list[str]:
        """The leading comment lines, without `#`."""
        found = []
        for line in self.text.splitlines():
            if not line.startswith("#"):
                break
            found.append(line[1:].strip())
        return found

    def marker(self, name: str) -> str | None:
        for text in self.markers():
            key, sep, value = text.partition(":")
            if key.strip() == name and (sep or not value):
                return value.strip()
        return None

    @property
    def region(self) -> str:
        found = _REGION.search("\n".join(self.markers()))
        return found[1].upper() if found else "US"


def parse_blocks(markdown: str) -> list[Block]:
    blocks: list[Block] = []
    lines = markdown.splitlines()
    directives: list[str] = []  # the <!-- ... --> lines just before a block
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if opening is None:
            directive = _DIRECTIVE.match(lines[i].strip())
            if directive:
                directives.append(directive[1])
            elif lines[i].strip():
                directives = []
            i += 1
            continue
        start = i + 1
        end = start
        while end < len(lines) and lines[end].rstrip() != "```":
            end += 1
        assert end < len(lines), f"{DOC_NAME}:{i + 1}: unclosed code block"
        names = [d.removeprefix("file:").strip() for d in directives if d.startswith("file:")]
        blocks.append(
            Block(
                index=len(blocks),
                lang=opening[1],
                line=start + 1,
                text="\n".join(lines[start:end]) + "\n",
                file=names[0] if names else None,
                context="fragment-context" in directives,
            )
        )
        directives = []
        i = end + 1
    return blocks


BLOCKS = parse_blocks(DOC.read_text(encoding="utf-8"))
YAML_BLOCKS = [b for b in BLOCKS if b.lang == "yaml"]
SH_BLOCKS = [b for b in BLOCKS if b.lang == "sh"]


def files_for(block: Block) -> dict[str, str]:
    """Every named file of the doc, as defined last before `block` (else first after it)."""
    files: dict[str, str] = {}
    for other in BLOCKS:
        if other.file is None:
            continue
        if other.index < block.index or other.file not in files:
            files[other.file] = other.text
    return files


def write_files(files: dict[str, str], into: Path) -> None:
    for name, text in files.items():
        path = into / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no stray .env; relative paths land here
    for key in list(os.environ):
        if key.startswith(("OPENAI_", "SWITCHBOARD_")):
            monkeypatch.delenv(key)


# --- the yaml blocks ------------------------------------------------------------------------


def context_text() -> str:
    """The fragment context's top-level keys other than routes and default."""
    found = [b for b in YAML_BLOCKS if b.context]
    assert len(found) == 1, "exactly one yaml block must be marked <!-- fragment-context -->"
    kept: list[str] = []
    skipping = False
    for line in found[0].text.splitlines():
        if line and not line[0].isspace() and not line.startswith("#"):
            skipping = line.startswith(("routes:", "default:"))
        if not skipping:
            kept.append(line)
    return "\n".join(kept) + "\n"


def routes_text(block: Block) -> str:
    """The block as a routes file whose lines are those of docs/routes.md."""
    if block.marker("fragment") is None:
        return "\n" * (block.line - 1) + block.text
    routes = "\n" * (block.line - 2) + "routes:\n" + textwrap.indent(block.text, "  ")
    return routes + context_text()


def is_sample_calls(block: Block) -> bool:
    if block.marker("fragment") is not None or block.marker("error") is not None:
        return False
    data = yaml.safe_load(block.text)
    return isinstance(data, list) or (isinstance(data, dict) and set(data) == {"calls"})


def test_the_doc_has_examples() -> None:
    assert len(YAML_BLOCKS) >= 40
    assert len(SH_BLOCKS) >= 8
    assert any(b.marker("error") for b in YAML_BLOCKS)
    assert any(b.marker("fragment") is not None for b in YAML_BLOCKS)


@pytest.mark.parametrize("block", YAML_BLOCKS, ids=lambda b: b.id)
def test_yaml_example(block: Block, tmp_path: Path) -> None:
    write_files(files_for(block), tmp_path / "docs")
    if is_sample_calls(block):
        # Loaded here; run by a `$ switchboard test` example of the doc.
        path = tmp_path / "calls.yaml"
        path.write_text(block.text, encoding="utf-8")
        assert load_samples(path)
        runs = [c.argv[1:2] for b in SH_BLOCKS for c in parse_commands(b) if c.argv[0] == "test"]
        assert [block.file] in runs, f"{DOC_NAME}:{block.line}: no `switchboard test` runs it"
        return
    text = routes_text(block)
    error = block.marker("error")
    if error:
        with pytest.raises(RulesError) as caught:
            compile_rules(text, DOC_NAME, region=block.region)
        assert error in str(caught.value)
        return
    try:
        rules = compile_rules(text, DOC_NAME, region=block.region)
    except RulesError as exc:
        pytest.fail(f"the example at {DOC_NAME}:{block.line} does not compile:\n{exc}")
    warning = block.marker("warning")
    if warning:
        assert any(warning in w for w in rules.warnings), rules.warnings
    else:
        assert rules.warnings == ()


# --- the commands ---------------------------------------------------------------------------


@dataclass
class Command:
    line: int
    text: str
    env: dict[str, str] = field(default_factory=dict)
    argv: list[str] = field(default_factory=list)
    redirect: str | None = None
    exit_code: int = 0
    shown: list[str] = field(default_factory=list)


def parse_commands(block: Block) -> Iterator[Command]:
    lines = block.text.splitlines()
    i = 0
    current: Command | None = None
    while i < len(lines):
        line = lines[i]
        if line.startswith("$ "):
            if current is not None:
                yield current
            first = i
            text = line[2:]
            while text.endswith("\\"):
                i += 1
                text = text[:-1] + " " + lines[i].strip()
            current = _command(block.line + first, text)
        elif current is not None:
            current.shown.append(line)
        else:
            pytest.fail(f"{DOC_NAME}:{block.line + i}: output before any `$ switchboard` line")
        i += 1
    if current is not None:
        yield current


def _command(line: int, text: str) -> Command:
    command = Command(line, text)
    found = _EXIT.search(text)
    if found:
        command.exit_code = int(found[1])
        text = text[: found.start()]
    words = shlex.split(text)
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
        name, _, value = words.pop(0).partition("=")
        command.env[name] = value
    assert words and words[0] == "switchboard", f"{DOC_NAME}:{line}: not a switchboard command"
    if ">" in words:
        at = words.index(">")
        command.redirect = words[at + 1]
        words = words[:at] + words[at + 2 :]
    command.argv = words[1:]
    assert command.argv and command.argv[0] in COMMANDS, f"{DOC_NAME}:{line}: {text}"
    return command


def _normal(line: str) -> str:
    return _VERSION.sub(r"version\1<hash>", line.rstrip())


def test_every_command_shown_is_run() -> None:
    """No `switchboard check|explain|test` example escapes: all are `$` lines in sh blocks."""
    mention = re.compile(
        r"^\s*(\$\s*)?([A-Z_]+=\S*\s+)*(\S*/)?switchboard\s+(check|explain|test)(\s|$)"
    )
    for block in BLOCKS:
        if block.lang in ("yaml", "text", "json"):
            continue
        for offset, line in enumerate(block.text.splitlines()):
            if mention.match(line):
                where = f"{DOC_NAME}:{block.line + offset}"
                assert block.lang == "sh", f"{where}: put commands in ```sh blocks"
                assert line.startswith("$ "), f"{where}: write `$ switchboard ...` to have it run"


@pytest.mark.parametrize("block", SH_BLOCKS, ids=lambda b: b.id)
def test_sh_example(
    block: Block,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    write_files(files_for(block), tmp_path)
    commands = list(parse_commands(block))
    assert commands
    for command in commands:
        where = f"{DOC_NAME}:{command.line}: $ {command.text}"
        with monkeypatch.context() as env:
            for name, value in command.env.items():
                env.setenv(name, value)
            code = main(command.argv)
        out, err = capsys.readouterr()
        if command.redirect is not None:
            (tmp_path / command.redirect).write_text(out, encoding="utf-8")
            out = ""
        assert code == command.exit_code, f"{where}\nexit status {code}\n{out}{err}"
        streams = [[_normal(line) for line in text.splitlines()] for text in (out, err)]
        positions = [0, 0]
        shown = [_normal(s) for s in command.shown if s.strip() and s.strip() != "..."]
        if command.redirect is None:
            assert shown, f"{where}: show at least one line of its output"
        for line in shown:
            # In order within standard output and within standard error, which a terminal
            # interleaves.
            for n, stream in enumerate(streams):
                if line in stream[positions[n] :]:
                    positions[n] = stream.index(line, positions[n]) + 1
                    break
            else:
                output = "\n".join(streams[0] + streams[1])
                pytest.fail(f"{where}\nline not in the output: {line!r}\noutput:\n{output}")


# --- the repository's routes.yaml and its sample calls ----------------------------------------

SAMPLE_CALLS = REPO / "tests" / "samples" / "calls.yaml"


def test_sample_calls_pass_against_the_repository_routes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["test", str(SAMPLE_CALLS), "--routes", str(REPO / "routes.yaml")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "FAIL" not in out
    assert re.search(r"^\d+ passed, 0 failed$", out, re.MULTILINE), out


def test_sample_calls_cover_every_route_and_the_default() -> None:
    rules = load_rules(REPO / "routes.yaml", region="US")
    expected = {sample.expect.route for sample in load_samples(SAMPLE_CALLS)}
    assert expected == {route.name for route in rules.routes} | {"default"}

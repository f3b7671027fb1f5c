"""Every code block of the README sections "A short tour" and "Using fastsamp inside your own code" runs as
written: Python blocks in a fresh namespace (a block whose first line is `# needs a GPU` skips without one),
`fastsamp ...` lines of bash blocks through fastsamp.cli.main, each in an empty working directory."""
import pathlib
import re
import shlex

import pytest
import torch

from fastsamp.cli import main

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
TOUR, OWN_CODE = "## A short tour", "## Using fastsamp inside your own code"


def section_blocks(section):
    """(language, code) of each fenced block of the section."""
    text = README.read_text()
    start = text.index(section)
    end = text.find("\n## ", start + len(section))
    body = text[start:end if end >= 0 else len(text)]
    return re.findall(r"^```(\w+)\n(.*?)^```$", body, flags=re.S | re.M)


BLOCKS = section_blocks(TOUR) + section_blocks(OWN_CODE)


def test_the_sections_have_examples():
    own = section_blocks(OWN_CODE)
    assert sum(lang == "python" for lang, _ in own) >= 2 and any(lang == "bash" for lang, _ in own)
    assert any(lang == "python" for lang, _ in section_blocks(TOUR))


@pytest.mark.parametrize("lang,code", BLOCKS, ids=[f"{lang}-{i}" for i, (lang, _) in enumerate(BLOCKS)])
def test_example_runs(lang, code, tmp_path, monkeypatch, one_thread):
    monkeypatch.chdir(tmp_path)
    if code.startswith("# needs a GPU") and not torch.cuda.is_available():
        pytest.skip("README example needs a GPU (CUDA graph capture)")
    if lang == "python":
        exec(compile(code, f"README example in {tmp_path}", "exec"), {"__name__": "readme_example"})
        return
    assert lang == "bash"
    commands = [shlex.split(line) for line in code.splitlines() if line.startswith("fastsamp ")]
    assert commands, "a bash example runs fastsamp"
    for argv in commands:
        assert main(argv[1:]) == 0

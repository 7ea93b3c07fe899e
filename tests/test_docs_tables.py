"""docs/tables.py: the README's tables are generated from the code, and CI runs the README's test command."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("reslab_docs_tables", REPO / "docs" / "tables.py")
tables = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tables)

README = REPO / "README.md"


def test_the_committed_readme_matches_its_generator() -> None:
    text = README.read_text()
    assert tables.sections(text) == ["families", "reproduction", "recipes"]
    assert tables.regenerate(text) == text, "README.md's generated tables are out of date: run python docs/tables.py"


def test_a_stale_section_is_rewritten_from_the_code_and_the_rest_kept() -> None:
    stale = ("before\n<!-- BEGIN GENERATED: recipes (python docs/tables.py) -->\n| recipe |\n| `fast` | 22 epochs |\n"
             "<!-- END GENERATED: recipes -->\nafter\n")
    new = tables.regenerate(stale)
    assert new.startswith("before\n<!-- BEGIN GENERATED: recipes") and new.endswith("<!-- END GENERATED: recipes -->\nafter\n")
    assert "22 epochs" not in new and "| `fast` |" in new and "| `paper` |" in new


def test_check_exits_1_and_names_a_stale_file(tmp_path: Path, capsys) -> None:
    page = tmp_path / "page.md"
    page.write_text("<!-- BEGIN GENERATED: families -->\nold\n<!-- END GENERATED: families -->\n")
    assert tables.main(["--check", str(page)]) == 1
    assert "out of date" in capsys.readouterr().out and page.read_text().count("old") == 1
    assert tables.main([str(page)]) == 0 and "| resnet-cifar |" in page.read_text()
    assert tables.main(["--check", str(page)]) == 0


def test_ci_runs_the_readmes_test_command_verbatim() -> None:
    commands = re.findall(r"^(python3 -m pip install -e '\.\[test\]' && python3 -m pytest.*?)\s*(?:#.*)?$",
                          README.read_text(), flags=re.MULTILINE)
    assert commands, "README.md has no test command"
    ci_lines = (REPO / ".ci" / "run").read_text().splitlines()
    assert commands[0] in ci_lines

"""The scoring package is a leaf: it imports nothing of ssmlora_app outside itself, so tasks and
tools can build on it and it can be tested (and reused) alone."""

import ast
from pathlib import Path

import ssmlora_app.scoring

PACKAGE = Path(ssmlora_app.scoring.__file__).parent


def test_scoring_imports_only_itself():
    outside = []
    files = sorted(PACKAGE.glob("*.py"))
    assert len(files) >= 10
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] if node.level == 0 else []
                if node.level:
                    outside.append(f"{path.name}: relative import")
            outside += [
                f"{path.name}: {n}"
                for n in names
                if n.split(".")[0] == "ssmlora_app" and not n.startswith("ssmlora_app.scoring")
            ]
    assert outside == []

"""The package's import direction: config -> data -> rollout -> train -> run, never back up the chain."""
import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "asympo_jax"

# A module may import from its own subpackage and from any lower level, never from its level or above:
# model and data are independent of each other, and so are rollout and evaluation.
LEVELS = {"common": 0, "model": 1, "data": 1, "rollout": 2, "evaluation": 2, "train": 3, "run": 4}


def imported_subpackages(path: pathlib.Path) -> set[str]:
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    names = []
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    elif isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    for name in names:
      parts = name.split(".")
      if parts[0] == "asympo_jax" and len(parts) > 1:
        found.add(parts[1])
  return found


def modules() -> list[pathlib.Path]:
  return sorted(p for p in PACKAGE.rglob("*.py") if len(p.relative_to(PACKAGE).parts) > 1)


def test_every_module_lives_in_a_known_subpackage():
  loose = [p.name for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "__main__.py")]
  assert not loose, f"modules outside the layered subpackages: {loose}"
  assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"} == set(LEVELS)


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_import_reaches_a_level_at_or_above_its_own(path):
  rel = path.relative_to(PACKAGE)
  own = rel.parts[0]
  bad = sorted(s for s in imported_subpackages(path) if s != own and s in LEVELS and LEVELS[s] >= LEVELS[own])
  assert not bad, f"{rel} ({own}, level {LEVELS[own]}) imports {bad}"


def test_the_checker_sees_a_back_edge(tmp_path):
  module = tmp_path / "m.py"
  module.write_text("from asympo_jax.train import step\nimport asympo_jax.run.config\nfrom asympo_jax import data\n")
  assert imported_subpackages(module) == {"train", "run", "data"}

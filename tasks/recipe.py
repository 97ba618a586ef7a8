"""Reading a recipe file: YAML, then the typed `Recipe` (tasks/config.py), then every step's
own recipe checks. The flows parse a recipe once, here, and pass the `Recipe` down.

`tasks/config.py` holds the typed sections and imports no step; the checks that need a
step's knowledge (a reader's options, a stage's sources, a validate setting) live in the
step's module and are listed in `STEP_CHECKS`, so this module sits above the steps.
"""
from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from tasks.config import Recipe
from tasks.errors import RecipeError
from tasks.ingest.registry import check_sources
from tasks.mix import check_stages
from tasks.validate import check_validate

#: Recipe checks owned by steps: `check(recipe, file)` raises RecipeError naming the file.
STEP_CHECKS = (check_sources, check_stages, check_validate)


def _format_validation_error(file: str, exc: ValidationError) -> str:
    lines = []
    for e in exc.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"  {loc}: {msg}")
    return f"{file}: invalid recipe\n" + "\n".join(lines)


def parse_recipe(data: dict, base_dir: str | Path = ".", file: str = "<recipe>") -> Recipe:
    if not isinstance(data, dict):
        raise RecipeError(f"{file}: a recipe is a YAML mapping with a `sources` list")
    try:
        recipe = Recipe.model_validate({**data, "base_dir": str(Path(base_dir).resolve()), "file": file})
    except ValidationError as exc:
        raise RecipeError(_format_validation_error(file, exc)) from None
    check_recipe(recipe, file)
    return recipe


def load_recipe(path: str | Path) -> Recipe:
    """Read, validate and check a recipe: unknown keys, formats or missing files fail here."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecipeError(f"recipe not found: {path}") from None
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML: {exc}") from None
    return parse_recipe(data, path.parent, str(path))


def check_recipe(recipe: Recipe, file: str = "<recipe>") -> None:
    """Checks that need the registries or the file system; all before any data is read."""
    for check in STEP_CHECKS:
        check(recipe, file)

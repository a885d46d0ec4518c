"""docs/configuration.md stays true to configs/schema.py: every field of every section has its row, with its default,
and no row names a field that no longer exists."""

import re
from pathlib import Path

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from configs.schema import Config

DOC = Path("docs/configuration.md").read_text()


def sections() -> dict[str, list[str]]:
    """Heading (`run`, `policy.lora`, ...) -> the table rows under it."""
    found, current = {}, None
    for line in DOC.splitlines():
        heading = re.match(r"^#+ .*?`([\w.]+)`", line)  # the first name in backticks
        if heading:
            current = heading.group(1)
            found[current] = []
        elif current and line.startswith("| `"):
            found[current].append(line)
    return found


def fields(model: type[BaseModel], prefix: str = "") -> dict[str, tuple[str, object]]:
    """Dotted section -> (field, default) for every leaf field; nested models are their own sections."""
    out = {}
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            out.update(fields(annotation, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = (name, info.get_default(call_default_factory=True))
    return out


def same(default: object, row: str) -> bool:
    """Whether the row's default column (its third) states `default`."""
    cell = re.split(r"(?<!\\)\|", row)[3].strip().strip("`")  # cells split on unescaped pipes
    if default is PydanticUndefined:
        return cell == "**required**"
    if isinstance(default, bool):
        return cell == str(default).lower()
    if isinstance(default, (int, float)):
        try:
            return float(cell) == float(default)
        except ValueError:
            return False
    return cell == str(default)


def test_every_field_has_a_row_with_its_default():
    rows = sections()
    missing, wrong = [], []
    for dotted, (name, default) in fields(Config).items():
        section = dotted.rpartition(".")[0] or "algorithm"
        candidates = rows.get(section, []) + (rows.get("algorithm", []) if section == "flow_grpo" else [])
        key = name if section in rows else dotted
        row = next((r for r in candidates if r.startswith(f"| `{key}` |") or r.startswith(f"| `{dotted}` |")), None)
        if row is None:
            missing.append(dotted)
        elif default is not None and not isinstance(default, (dict, list, tuple)) and not same(default, row):
            wrong.append(f"{dotted}: default {default!r} but its row is {row[:90]!r}")
    assert not missing, f"docs/configuration.md lacks rows for {missing}"
    assert not wrong, wrong


def test_no_row_names_a_removed_field():
    nested = {d.rpartition(".")[0].rpartition(".")[2] for d in fields(Config)}  # lora, old_policy, ...: own tables
    known = set(fields(Config)) | {d.rpartition(".")[2] for d in fields(Config)} | nested
    named = {re.match(r"\| `([\w.]+)`", row).group(1) for rows in sections().values() for row in rows}
    assert named <= known, sorted(named - known)

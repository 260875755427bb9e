"""docs/scaling.md's settings and presets tables say what the code does."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from core.settings import Settings
from feeder.policy import PRESETS, PolicySettings

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "scaling.md").read_text()
SETTINGS_SOURCE = (ROOT / "core" / "settings.py").read_text()


def section(title: str) -> str:
    start = DOC.index(f"\n## {title}\n")
    end = DOC.find("\n## ", start + 1)
    return DOC[start:end if end != -1 else None]


def table_rows(text: str) -> list[list[str]]:
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in text.splitlines() if line.startswith("| `")]
    return rows


def shown(value) -> str:
    """A default as the docs write it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"`{value}`" if value else "empty"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def block_settings(marker: str) -> list[str]:
    """The settings declared in one `# --- marker ---` block of core/settings.py."""
    start = SETTINGS_SOURCE.index(f"# --- {marker} ---")
    end = SETTINGS_SOURCE.index("# ---", start + 1)
    return re.findall(r"^    (\w+): \w+ = ", SETTINGS_SOURCE[start:end], re.M)


def test_every_scaler_and_simulator_setting_is_in_the_table_with_its_default():
    defaults = Settings()
    rows = {row[0].strip("`"): row[1] for row in table_rows(section("Settings"))}
    wanted = block_settings("scaler") + block_settings("the simulator (nommer-scaler simulate / suite)")
    assert wanted, "no scaler settings found"
    missing = [name for name in wanted if name not in rows]
    assert not missing, f"docs/scaling.md lacks settings {missing}"
    for name, default in rows.items():
        assert hasattr(defaults, name), f"docs/scaling.md names an unknown setting {name!r}"
        assert default == shown(getattr(defaults, name)), name


def test_the_presets_table_is_the_presets():
    rows = table_rows(section("Presets: wait or money"))
    header = next(line for line in section("Presets: wait or money").splitlines()
                  if line.startswith("| preset"))
    keys = [cell.strip().strip("`") for cell in header.strip().strip("|").split("|")][1:-1]
    fields = {f.name for f in dataclasses.fields(PolicySettings)}
    by_setting = {"scale_wait_tail_prob": "wait_tail_prob",
                  "scale_warm_min_arrivals_per_boot": "warm_min_arrivals_per_boot"}
    assert {row[0].strip("`") for row in rows} == set(PRESETS)
    for row in rows:
        preset = PRESETS[row[0].strip("`")]
        for key, cell in zip(keys, row[1:]):
            field = by_setting.get(key, key)
            assert field in fields and field in preset, key
            assert cell == shown(preset[field]), (row[0], key)

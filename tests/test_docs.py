"""The README's examples stay true: its example campaign passes validation."""

import json
import re
from pathlib import Path

from nurture.campaign_checks import check_campaign
from nurture.rendering import TemplateRenderer

ROOT = Path(__file__).resolve().parents[1]


def test_readme_campaign_example_validates() -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```json\n(.*?)```", readme, flags=re.DOTALL)
    campaigns = [json.loads(block) for block in blocks if '"sequence"' in block]
    assert campaigns, "the README shows no example campaign"
    for campaign in campaigns:
        spec, problems = check_campaign(campaign, TemplateRenderer(ROOT / "templates"))
        assert problems == []
        assert spec is not None


def test_every_setting_is_documented() -> None:
    from nurture.config import Settings

    docs = (ROOT / "README.md").read_text() + "".join(
        path.read_text() for path in sorted((ROOT / "docs").glob("*.md"))
    )
    missing = [
        (field.alias or name).upper()
        for name, field in Settings.model_fields.items()
        if (field.alias or name).upper() not in docs
    ]
    assert missing == [], f"settings missing from README.md and docs/: {missing}"

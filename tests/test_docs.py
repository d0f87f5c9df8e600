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

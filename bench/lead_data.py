"""The real lead data set that the model is measured on, and how to read it.

`../shared/data/lead-scoring/Leads.csv`: 9,240 leads of an online education
company with their outcome (`Converted`), described in its SOURCES.md.
"""

from pathlib import Path

LEADS_CSV = Path(__file__).resolve().parents[2] / "shared/data/lead-scoring/Leads.csv"

# Filled in by the sales team after contact, so they give the outcome away
# (SOURCES.md), and `Lead Number`, a row counter.
LEAKING_COLUMNS = [
    "Tags",
    "Lead Quality",
    "Last Notable Activity",
    "Asymmetrique Activity Index",
    "Asymmetrique Profile Index",
    "Asymmetrique Activity Score",
    "Asymmetrique Profile Score",
    "Lead Number",
]

# The CSV import mapping of the README's import command.
IMPORT_MAPPING = {
    "columns": {
        "Prospect ID": "externalId",
        "Converted": "outcome",
        "Lead Source": "source.channel",
        "Country": "company.country",
        "TotalVisits": "activity.websiteVisits",
        "Total Time Spent on Website": "activity.timeOnSiteSeconds",
        "Page Views Per Visit": "activity.pagesPerVisit",
    },
    "nullValues": ["Select"],
}

"""Tests for the streaming CSV lead import."""

import io
import time
import tracemalloc
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from nurture.config import get_settings
from nurture.csv_import import (
    ACTIVITY_FIELDS,
    AcceptedRow,
    ImportedLead,
    ImportMapping,
    MappingError,
    RejectedRow,
    read_rows,
)
from nurture.leads import normalize_email, normalize_phone

LEADS_CSV = (
    Path(__file__).resolve().parents[2]
    / "shared"
    / "data"
    / "lead-scoring"
    / "Leads.csv"
)

BASIC = {"Email": "contact.email", "Phone": "contact.phone", "Id": "externalId"}


def read(data: str | bytes, **mapping: Any) -> list[AcceptedRow | RejectedRow]:
    raw = data.encode() if isinstance(data, str) else data
    return list(read_rows(io.BytesIO(raw), ImportMapping.model_validate(mapping)))


def accepted(data: str | bytes, **mapping: Any) -> list[ImportedLead]:
    rows = read(data, **mapping)
    rejected = [row for row in rows if isinstance(row, RejectedRow)]
    assert rejected == []
    return [row.lead for row in rows if isinstance(row, AcceptedRow)]


def rejection(data: str | bytes, **mapping: Any) -> RejectedRow:
    rows = read(data, **mapping)
    assert len(rows) == 1
    row = rows[0]
    assert isinstance(row, RejectedRow), row
    return row


def mapping_errors(data: str | bytes, **mapping: Any) -> list[dict[str, str]]:
    with pytest.raises(MappingError) as caught:
        read(data, **mapping)
    return caught.value.errors


# Mapping validation


def test_mapping_unknown_target_lists_targets() -> None:
    with pytest.raises(ValidationError) as caught:
        ImportMapping.model_validate({"columns": {"E-mail": "contact.mail"}})
    [error] = caught.value.errors()
    assert error["loc"] == ("columns", "E-mail")
    assert "unknown target 'contact.mail'" in error["msg"]
    assert "did you mean 'contact.email'?" in error["msg"]
    assert "contact.firstName" in error["msg"]
    assert "activity.smsReplies" in error["msg"]
    assert "custom.<name>" in error["msg"]


@pytest.mark.parametrize(
    "target", ["activity.visits", "activity.", "custom.", "custom. ", "contact", ""]
)
def test_mapping_rejects_invalid_target(target: str) -> None:
    with pytest.raises(ValidationError) as caught:
        ImportMapping.model_validate({"columns": {"A": target}})
    assert caught.value.errors()[0]["loc"] == ("columns", "A")


@pytest.mark.parametrize(
    "target",
    [
        "contact.firstName",
        "outcomeAt",
        "externalId",
        "ignore",
        "custom.Lead Origin",
        *(f"activity.{name}" for name in ACTIVITY_FIELDS),
    ],
)
def test_mapping_accepts_valid_target(target: str) -> None:
    assert ImportMapping(columns={"A": target}).columns == {"A": target}


@pytest.mark.parametrize("delimiter", ["", ",;", '"', "\n"])
def test_mapping_rejects_bad_delimiter(delimiter: str) -> None:
    with pytest.raises(ValidationError, match="invalid delimiter"):
        ImportMapping(delimiter=delimiter)


@pytest.mark.parametrize("encoding", ["utf-99", "base64"])
def test_mapping_rejects_unknown_encoding(encoding: str) -> None:
    with pytest.raises(ValidationError, match="unknown text encoding"):
        ImportMapping(encoding=encoding)


def test_mapping_rejects_overlapping_outcome_values() -> None:
    with pytest.raises(ValidationError, match="both contain 'yes'"):
        ImportMapping(converted_values=["Yes"], lost_values=["yes", "no"])


def test_mapping_reads_camel_case_keys() -> None:
    mapping = ImportMapping.model_validate(
        {"nullValues": ["Select"], "convertedValues": ["Y"], "lostValues": ["N"]}
    )
    assert mapping.null_values == ["Select"]
    assert mapping.converted_values == ["Y"]
    assert mapping.lost_values == ["N"]


# Header checks


def test_header_errors_reported_together() -> None:
    errors = mapping_errors(
        "Email,Name,Name,Mail,Value\n",
        columns={
            "Email": "contact.email",
            "Mail": "contact.email",
            "Phone": "contact.phone",
            "Value": "outcomeValue",
        },
    )
    by_type = {error["type"]: error for error in errors}
    assert set(by_type) == {
        "duplicate_column",
        "column_not_found",
        "duplicate_target",
        "outcome_not_mapped",
    }
    assert by_type["duplicate_column"]["path"] == "(header)"
    assert "'Name' appears 2 times" in by_type["duplicate_column"]["message"]
    assert by_type["column_not_found"]["path"] == "columns.Phone"
    assert "'Phone' is not in the header" in by_type["column_not_found"]["message"]
    assert by_type["duplicate_target"]["path"] == "columns.Mail"
    assert "'Email', 'Mail'" in by_type["duplicate_target"]["message"]
    assert by_type["outcome_not_mapped"]["path"] == "columns.Value"


def test_header_error_raised_when_iteration_starts() -> None:
    rows = read_rows(io.BytesIO(b"A\n1\n"), ImportMapping(columns=BASIC))
    with pytest.raises(MappingError):
        next(rows)


def test_header_unvalidated_mapping_checked() -> None:
    mapping = ImportMapping.model_construct(columns={"Id": "externalId", "A": "bogus"})
    with pytest.raises(MappingError) as caught:
        list(read_rows(io.BytesIO(b"Id,A\n1,x\n"), mapping))
    [error] = caught.value.errors
    assert error["path"] == "columns.A"
    assert error["type"] == "unknown_target"


def test_header_missing_column_suggests_name() -> None:
    [error] = mapping_errors(
        "E-mail,Id\n", columns={"email": "contact.email", "Id": "externalId"}
    )
    assert error["message"] == (
        "column 'email' is not in the header: did you mean 'E-mail'?"
    )


def test_header_single_column_suggests_delimiter() -> None:
    errors = mapping_errors("Email;Id\n", columns={"Email": "contact.email"})
    [error] = [error for error in errors if error["type"] == "column_not_found"]
    assert "set delimiter to ';'" in error["message"]


def test_header_unmapped_column_collides_with_custom() -> None:
    [error] = mapping_errors(
        "Id,Notes,Remarks\n", columns={"Id": "externalId", "Remarks": "custom.Notes"}
    )
    assert error["type"] == "duplicate_target"
    assert error["path"] == "columns.Remarks"
    assert "unmapped columns become custom fields" in error["message"]


def test_header_unmapped_ignore_avoids_collision() -> None:
    [lead] = accepted(
        "Id,Notes,Remarks\n7,a,b\n",
        columns={"Id": "externalId", "Remarks": "custom.Notes"},
        unmapped="ignore",
    )
    assert lead.custom_fields == {"Notes": "b"}


def test_header_requires_identifier_mapping() -> None:
    [error] = mapping_errors("Name\n", columns={"Name": "contact.firstName"})
    assert error["type"] == "identifier_not_mapped"
    assert error["path"] == "columns"


@pytest.mark.parametrize("data", [b"", b"\n\n", b" , \n"])
def test_header_empty_file(data: bytes) -> None:
    [error] = mapping_errors(data, columns=BASIC)
    assert error["type"] == "empty_file"
    assert error["message"].startswith("the file is empty")


def test_header_invalid_encoding() -> None:
    [error] = mapping_errors(b"Id,Pr\xe9nom\n1,A\n", columns={"Id": "externalId"})
    assert error["type"] == "unicode_decode"
    assert "line 1" in error["message"]
    assert "not valid utf-8" in error["message"]


def test_header_skips_leading_blank_lines() -> None:
    rows = read("\n\nId\n7\n", columns={"Id": "externalId"})
    assert [row.line for row in rows] == [4]


# Row values


def test_row_maps_every_section() -> None:
    data = (
        "First,Last,Email,Phone,Zone,Company,Industry,Size,Revenue,Web,Country,"
        "Utm Source,Campaign,Medium,Content,Ref,Won,Amount,Currency,Closed,"
        "Visits,Pages,Seconds,Title\n"
        "Ada,Lovelace,ada@example.org,+44 20 7946 0958,Europe/London,Analytical,"
        "Software,11-50,1M,https://example.org,GB,google,spring,cpc,banner,"
        "crm-17,won,1200.50,eur,2024-05-01,5.0,2.5,90,Countess\n"
    )
    columns = {
        "First": "contact.firstName",
        "Last": "contact.lastName",
        "Email": "contact.email",
        "Phone": "contact.phone",
        "Zone": "contact.timezone",
        "Company": "company.name",
        "Industry": "company.industry",
        "Size": "company.size",
        "Revenue": "company.revenue",
        "Web": "company.website",
        "Country": "company.country",
        "Utm Source": "source.channel",
        "Campaign": "source.campaign",
        "Medium": "source.medium",
        "Content": "source.content",
        "Ref": "externalId",
        "Won": "outcome",
        "Amount": "outcomeValue",
        "Currency": "outcomeCurrency",
        "Closed": "outcomeAt",
        "Visits": "activity.websiteVisits",
        "Pages": "activity.pagesPerVisit",
        "Seconds": "activity.timeOnSiteSeconds",
    }
    [lead] = accepted(data, columns=columns)

    assert lead.external_id == "crm-17"
    assert lead.contact.first_name == "Ada"
    assert lead.contact.last_name == "Lovelace"
    assert lead.contact.email == "ada@example.org"
    assert lead.contact.phone == "+442079460958"
    assert lead.contact.timezone == "Europe/London"

    assert lead.company.name == "Analytical"
    assert lead.company.industry == "Software"
    assert lead.company.size == "11-50"
    assert lead.company.revenue == "1M"
    assert lead.company.website == "https://example.org"
    assert lead.company.country == "GB"

    assert lead.source.channel == "google"
    assert lead.source.campaign == "spring"
    assert lead.source.medium == "cpc"
    assert lead.source.content == "banner"

    assert lead.outcome is not None
    assert lead.outcome.outcome == "converted"
    assert lead.outcome.value == Decimal("1200.50")
    assert lead.outcome.currency == "EUR"
    assert lead.outcome.occurred_at == datetime(2024, 5, 1, tzinfo=UTC)

    assert lead.activity == {
        "websiteVisits": 5.0,
        "pagesPerVisit": 2.5,
        "timeOnSiteSeconds": 90.0,
    }
    assert lead.custom_fields == {"Title": "Countess"}


def test_row_email_normalized_like_api() -> None:
    [lead] = accepted("Email\n  Ada@EXAMPLE.ORG \n", columns={"Email": "contact.email"})
    assert lead.contact.email == "Ada@example.org"
    assert lead.contact.email == normalize_email("Ada@EXAMPLE.ORG")


def test_row_phone_normalized_to_e164() -> None:
    data = "Phone\n+49 30 1234567\n(415) 555-2671\n"
    first, second = accepted(data, columns={"Phone": "contact.phone"})
    assert first.contact.phone == "+49301234567"
    region = get_settings().default_phone_region
    assert second.contact.phone == normalize_phone("(415) 555-2671", region)[0]


def test_row_invalid_email_names_column() -> None:
    row = rejection("Email\nnot-an-address\n", columns={"Email": "contact.email"})
    [error] = row.errors
    assert error["path"] == "Email"
    assert error["type"] == "value_error"
    assert error["message"].startswith("invalid email address:")


def test_row_invalid_phone_names_column() -> None:
    row = rejection(
        "Tel,Id\n12,7\n", columns={"Tel": "contact.phone", "Id": "externalId"}
    )
    [error] = row.errors
    assert error["path"] == "Tel"
    assert "use international format" in error["message"]


def test_row_invalid_timezone_names_column() -> None:
    row = rejection(
        "Id,Zone\n7,Mars/Olympus\n",
        columns={"Id": "externalId", "Zone": "contact.timezone"},
    )
    [error] = row.errors
    assert error["path"] == "Zone"
    assert "unknown time zone 'Mars/Olympus'" in error["message"]


def test_row_too_long_names_column() -> None:
    row = rejection(
        f"Id,Company Name\n7,{'x' * 300}\n",
        columns={"Id": "externalId", "Company Name": "company.name"},
    )
    [error] = row.errors
    assert error["path"] == "Company Name"
    assert error["type"] == "string_too_long"


def test_row_external_id_too_long() -> None:
    row = rejection(f"Id\n{'x' * 256}\n", columns={"Id": "externalId"})
    assert row.errors[0]["path"] == "Id"
    assert row.errors[0]["type"] == "string_too_long"


def test_row_external_id_without_email_accepted() -> None:
    [lead] = accepted("Email,Phone,Id\n,,crm-1\n", columns=BASIC)
    assert lead.external_id == "crm-1"
    assert lead.contact.email is None


def test_row_without_identifier_rejected() -> None:
    row = rejection("Email,Phone,Id,Name\n,,,Ada\n", columns=BASIC)
    [error] = row.errors
    assert error["path"] == "(row)"
    assert error["type"] == "missing_identifier"
    assert "no email, phone or externalId" in error["message"]
    assert "fill in 'Email' or 'Phone' or 'Id'" in error["message"]


def test_row_collects_all_errors() -> None:
    row = rejection(
        "Email,Visits,Won\nbad,many,maybe\n",
        columns={
            "Email": "contact.email",
            "Visits": "activity.websiteVisits",
            "Won": "outcome",
        },
    )
    assert sorted(error["path"] for error in row.errors) == ["Email", "Visits", "Won"]


def test_row_null_values_are_missing() -> None:
    [lead] = accepted(
        "Id,Country,Origin,Note\n7,Select,  Select ,\n",
        columns={"Id": "externalId", "Country": "company.country"},
        null_values=["Select"],
    )
    assert lead.company.country is None
    assert lead.custom_fields == {}


def test_row_unmapped_custom_keeps_values() -> None:
    [lead] = accepted(
        "Id,Lead Origin,Score\n7, API ,15\n", columns={"Id": "externalId"}
    )
    assert lead.custom_fields == {"Lead Origin": "API", "Score": "15"}


def test_row_unmapped_ignore_drops_values() -> None:
    [lead] = accepted(
        "Id,Lead Origin,Score\n7,API,15\n",
        columns={"Id": "externalId", "Score": "custom.score"},
        unmapped="ignore",
    )
    assert lead.custom_fields == {"score": "15"}


def test_row_ignore_target_drops_column() -> None:
    [lead] = accepted(
        "Id,Secret\n7,x\n", columns={"Id": "externalId", "Secret": "ignore"}
    )
    assert lead.custom_fields == {}


# Numbers


@pytest.mark.parametrize(
    ("field", "text", "number"),
    [
        ("websiteVisits", "5", 5.0),
        ("websiteVisits", "5.0", 5.0),
        ("websiteVisits", "0", 0.0),
        ("pagesPerVisit", "2.67", 2.67),
        ("pagesPerVisit", ".5", 0.5),
        ("timeOnSiteSeconds", "+1532", 1532.0),
    ],
)
def test_activity_accepts_plain_decimal(field: str, text: str, number: float) -> None:
    [lead] = accepted(
        f"Id,Value\n7,{text}\n",
        columns={"Id": "externalId", "Value": f"activity.{field}"},
    )
    assert lead.activity == {field: number}


@pytest.mark.parametrize(
    ("field", "text", "message"),
    [
        ("websiteVisits", '"1,234"', "invalid number '1,234': write a plain decimal"),
        ("websiteVisits", "1e3", "invalid number '1e3'"),
        ("websiteVisits", "NaN", "invalid number 'NaN'"),
        ("websiteVisits", "inf", "invalid number 'inf'"),
        ("websiteVisits", "5 visits", "invalid number '5 visits'"),
        ("websiteVisits", "-1", "invalid value '-1': websiteVisits cannot be negative"),
        ("websiteVisits", "2.5", "websiteVisits is a count, so write a whole number"),
        ("pagesPerVisit", "9" * 400, "the number is too large"),
    ],
)
def test_activity_rejects_invalid_number(field: str, text: str, message: str) -> None:
    row = rejection(
        f"Id,Visits\n7,{text}\n",
        columns={"Id": "externalId", "Visits": f"activity.{field}"},
    )
    [error] = row.errors
    assert error["path"] == "Visits"
    assert error["type"] == "value_error"
    assert message in error["message"]


def test_imported_lead_rejects_unknown_activity() -> None:
    with pytest.raises(ValidationError, match="unknown activity field clicks"):
        ImportedLead(external_id="7", activity={"clicks": 1.0})


def test_imported_lead_rejects_negative_activity() -> None:
    with pytest.raises(ValidationError, match="emailOpens must be 0 or more"):
        ImportedLead(external_id="7", activity={"emailOpens": -1.0})


def test_imported_lead_requires_identifier() -> None:
    with pytest.raises(ValidationError) as caught:
        ImportedLead(company={"name": "Acme"})  # type: ignore[arg-type]
    [error] = caught.value.errors()
    assert error["type"] == "missing_identifier"


# Outcomes

OUTCOME = {"Id": "externalId", "Result": "outcome"}
OUTCOME_ALL = OUTCOME | {
    "Amount": "outcomeValue",
    "Currency": "outcomeCurrency",
    "Closed": "outcomeAt",
}


@pytest.mark.parametrize(
    ("text", "outcome"),
    [
        ("1", "converted"),
        ("YES", "converted"),
        ("Won", "converted"),
        ("true", "converted"),
        ("0", "lost"),
        ("Lost", "lost"),
        ("no", "lost"),
    ],
)
def test_outcome_maps_cell_values(text: str, outcome: str) -> None:
    [lead] = accepted(f"Id,Result\n7,{text}\n", columns=OUTCOME)
    assert lead.outcome is not None
    assert lead.outcome.outcome == outcome


def test_outcome_custom_values() -> None:
    leads = accepted(
        "Id,Result\n1,Closed Won\n2,closed lost\n",
        columns=OUTCOME,
        converted_values=["Closed Won"],
        lost_values=["Closed Lost"],
    )
    assert [lead.outcome.outcome for lead in leads if lead.outcome] == [
        "converted",
        "lost",
    ]


def test_outcome_unknown_value_lists_accepted() -> None:
    row = rejection("Id,Result\n7,maybe\n", columns=OUTCOME)
    [error] = row.errors
    assert error["path"] == "Result"
    assert error["message"].startswith("unknown outcome 'maybe': use one of 1, true")
    assert "0, false, no, lost for lost" in error["message"]


def test_outcome_missing_means_none() -> None:
    [lead] = accepted("Id,Result\n7,\n", columns=OUTCOME)
    assert lead.outcome is None


def test_outcome_value_without_outcome_rejected() -> None:
    row = rejection(
        "Id,Result,Amount,Currency,Closed\n7,,100,EUR,\n", columns=OUTCOME_ALL
    )
    assert [error["path"] for error in row.errors] == ["Amount", "Currency"]
    assert all(error["type"] == "outcome_missing" for error in row.errors)
    assert "the outcome column 'Result' is empty" in row.errors[0]["message"]


def test_outcome_invalid_value_no_second_error() -> None:
    row = rejection(
        "Id,Result,Amount,Currency,Closed\n7,maybe,100,,\n", columns=OUTCOME_ALL
    )
    assert [error["path"] for error in row.errors] == ["Result"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('"1,200"', "invalid number '1,200'"),
        ("$100", "invalid number '$100'"),
        ("100.123", "no more than 2 decimal places"),
        ("-5", "greater than or equal to 0"),
    ],
)
def test_outcome_invalid_amount_names_column(text: str, message: str) -> None:
    row = rejection(
        f"Id,Result,Amount,Currency,Closed\n7,won,{text},,\n", columns=OUTCOME_ALL
    )
    [error] = row.errors
    assert error["path"] == "Amount"
    assert message in error["message"]


def test_outcome_invalid_currency_names_column() -> None:
    row = rejection(
        "Id,Result,Amount,Currency,Closed\n7,won,,euro,\n", columns=OUTCOME_ALL
    )
    [error] = row.errors
    assert error["path"] == "Currency"
    assert error["type"] == "string_pattern_mismatch"


@pytest.mark.parametrize(
    ("text", "moment"),
    [
        ("2024-05-01", datetime(2024, 5, 1, tzinfo=UTC)),
        ("2024-05-01T14:30:00", datetime(2024, 5, 1, 14, 30, tzinfo=UTC)),
        ("2024-05-01T14:30:00Z", datetime(2024, 5, 1, 14, 30, tzinfo=UTC)),
        ("2024-05-01T14:30:00+02:00", datetime(2024, 5, 1, 12, 30, tzinfo=UTC)),
    ],
)
def test_outcome_at_parses_iso_8601(text: str, moment: datetime) -> None:
    [lead] = accepted(
        f"Id,Result,Amount,Currency,Closed\n7,won,,,{text}\n", columns=OUTCOME_ALL
    )
    assert lead.outcome is not None
    assert lead.outcome.occurred_at == moment


@pytest.mark.parametrize("text", ["01/05/2024", "yesterday", "2024-13-01"])
def test_outcome_at_rejects_other_formats(text: str) -> None:
    row = rejection(
        f"Id,Result,Amount,Currency,Closed\n7,won,,,{text}\n", columns=OUTCOME_ALL
    )
    [error] = row.errors
    assert error["path"] == "Closed"
    assert error["message"].startswith(f"invalid date {text!r}: use ISO 8601")


# File format


def test_format_utf8_bom() -> None:
    [lead] = accepted(
        b"\xef\xbb\xbfId,Name\n7,\xc3\x89mile\n", columns={"Id": "externalId"}
    )
    assert lead.external_id == "7"
    assert lead.custom_fields == {"Name": "\u00c9mile"}


def test_format_quoted_cells_keep_line_numbers() -> None:
    data = (
        "Id,Note,Company\n"
        '1,"line one\nline two, with a comma",Acme\n'
        '2,"""quoted""",Beta\n'
        "\n"
        '3,"a\n\nb",Gamma\n'
        "4,plain,Delta\n"
    )
    rows = read(data, columns={"Id": "externalId", "Company": "company.name"})
    assert [row.line for row in rows] == [2, 4, 6, 9]
    leads = [row.lead for row in rows if isinstance(row, AcceptedRow)]
    assert [lead.custom_fields["Note"] for lead in leads] == [
        "line one\nline two, with a comma",
        '"quoted"',
        "a\n\nb",
        "plain",
    ]
    assert leads[0].company.name == "Acme"


def test_format_crlf_line_endings() -> None:
    rows = read(
        b'Id,Note\r\n1,a\r\n2,"b\r\nc"\r\n3,d\r\n', columns={"Id": "externalId"}
    )
    assert [row.line for row in rows] == [2, 3, 5]
    assert isinstance(rows[1], AcceptedRow)
    assert rows[1].lead.custom_fields == {"Note": "b\r\nc"}


def test_format_semicolon_delimiter() -> None:
    [lead] = accepted(
        "Id;Company;Pages\n7;Acme, Inc.;2.5\n",
        columns={
            "Id": "externalId",
            "Company": "company.name",
            "Pages": "activity.pagesPerVisit",
        },
        delimiter=";",
    )
    assert lead.company.name == "Acme, Inc."
    assert lead.activity == {"pagesPerVisit": 2.5}


def test_format_tab_delimiter() -> None:
    [lead] = accepted(
        "Id\tCompany\n7\tAcme\n",
        columns={"Id": "externalId", "Company": "company.name"},
        delimiter="\t",
    )
    assert lead.company.name == "Acme"


def test_format_blank_lines_skipped() -> None:
    rows = read("Id,Note\n\n1,a\n   \n,\n\n2,b\n", columns={"Id": "externalId"})
    assert [row.line for row in rows] == [3, 7]


@pytest.mark.parametrize(("line", "count"), [("1,a,extra", 3), ("1", 1)])
def test_format_wrong_cell_count_rejected(line: str, count: int) -> None:
    rows = read(f"Id,Note\n{line}\n2,b\n", columns={"Id": "externalId"})
    assert isinstance(rows[0], RejectedRow)
    [error] = rows[0].errors
    assert error["path"] == "(row)"
    assert error["type"] == "cell_count"
    assert error["message"].startswith(
        f"the row has {count} cells but the header has 2 columns"
    )
    assert isinstance(rows[1], AcceptedRow)


def test_format_unnamed_empty_column_ignored() -> None:
    [lead] = accepted("Id,Note,\n7,a,\n", columns={"Id": "externalId"})
    assert lead.custom_fields == {"Note": "a"}


def test_format_unnamed_column_value_rejected() -> None:
    row = rejection("Id,Note,\n7,a,oops\n", columns={"Id": "externalId"})
    [error] = row.errors
    assert error["type"] == "unnamed_column"
    assert error["message"].startswith("column 3 has no name in the header")


def test_format_invalid_byte_rejects_row_only() -> None:
    data = b"Id,Name,Note\n1,Ren\xe9,x\n2,Ana,y\n"
    rows = read(data, columns={"Id": "externalId"})
    assert isinstance(rows[0], RejectedRow)
    assert rows[0].line == 2
    [error] = rows[0].errors
    assert error["path"] == "Name"
    assert error["type"] == "unicode_decode"
    assert error["message"].startswith("not valid utf-8:")
    assert isinstance(rows[1], AcceptedRow)
    assert rows[1].line == 3


def test_format_invalid_byte_in_ignored_column() -> None:
    [lead] = accepted(
        b"Id,Name\n1,Ren\xe9\n", columns={"Id": "externalId"}, unmapped="ignore"
    )
    assert lead.external_id == "1"


def test_format_nul_character_rejected() -> None:
    row = rejection(b"Id,Name\n1,A\x00B\n", columns={"Id": "externalId"})
    [error] = row.errors
    assert error["path"] == "Name"
    assert error["type"] == "nul_character"


@pytest.mark.parametrize(
    ("codec", "kind"), [("utf-16", "unicode_decode"), ("utf-16-le", "nul_character")]
)
def test_format_utf16_read_as_utf8(codec: str, kind: str) -> None:
    data = "Id,Name\n1,A\n".encode(codec)
    [error] = mapping_errors(data, columns={"Id": "externalId"})
    assert error["type"] == kind
    assert "utf-16" in error["message"]


def test_format_latin1_encoding() -> None:
    [lead] = accepted(
        b"Id,Name\n1,Ren\xe9\n", columns={"Id": "externalId"}, encoding="latin-1"
    )
    assert lead.custom_fields == {"Name": "Ren\u00e9"}


def test_format_utf16_with_bom() -> None:
    data = 'Id\tName\tNote\r\n1\tRen\u00e9\t"a\r\nb"\r\n2\tAna\tc\r\n'.encode("utf-16")
    rows = read(data, columns={"Id": "externalId"}, delimiter="\t", encoding="utf-16")
    assert [row.line for row in rows] == [2, 4]
    leads = [row.lead for row in rows if isinstance(row, AcceptedRow)]
    assert [lead.custom_fields for lead in leads] == [
        {"Name": "Ren\u00e9", "Note": "a\r\nb"},
        {"Name": "Ana", "Note": "c"},
    ]


def test_format_utf16_invalid_raises() -> None:
    data = "Id\n1\n".encode("utf-16-le") + b"\x00\xdc" + "\n".encode("utf-16-le")
    with pytest.raises(ValueError, match="not valid utf-16-le near line"):
        read(data, columns={"Id": "externalId"}, encoding="utf-16-le")


def test_format_stream_left_open() -> None:
    stream = io.BytesIO("Id\n1\n".encode("utf-16"))
    rows = list(
        read_rows(
            stream, ImportMapping(columns={"Id": "externalId"}, encoding="utf-16")
        )
    )
    assert len(rows) == 1
    assert not stream.closed


def test_format_oversized_field_rejects_row() -> None:
    data = f'Id,Note\n1,"{"x" * 200_000}"\n2,b\n'
    rows = read(data, columns={"Id": "externalId"})
    assert isinstance(rows[0], RejectedRow)
    [error] = rows[0].errors
    assert error["type"] == "csv"
    assert "field larger than field limit" in error["message"]
    assert isinstance(rows[1], AcceptedRow)
    assert rows[1].line == 3


def test_format_overlong_line_raises() -> None:
    data = b"Id,Note\n1," + b"x" * (2 << 20) + b"\n"
    with pytest.raises(ValueError, match="line 2 is longer than 1048576 bytes"):
        read(data, columns={"Id": "externalId"})


# Real data and scale


@pytest.mark.skipif(not LEADS_CSV.is_file(), reason=f"{LEADS_CSV} not found")
def test_lead_scoring_data_set() -> None:
    mapping = ImportMapping(
        columns={
            "Prospect ID": "externalId",
            "Converted": "outcome",
            "TotalVisits": "activity.websiteVisits",
            "Total Time Spent on Website": "activity.timeOnSiteSeconds",
            "Page Views Per Visit": "activity.pagesPerVisit",
            "Country": "company.country",
            "Lead Source": "source.channel",
        },
        null_values=["Select"],
    )
    started = time.perf_counter()
    with LEADS_CSV.open("rb") as stream:
        rows = list(read_rows(stream, mapping))
    elapsed = time.perf_counter() - started

    leads = [row.lead for row in rows if isinstance(row, AcceptedRow)]
    rejected = [row for row in rows if isinstance(row, RejectedRow)]
    assert rejected == []
    assert len(leads) == 9240
    outcomes = [lead.outcome.outcome for lead in leads if lead.outcome]
    assert outcomes.count("converted") == 3561
    assert outcomes.count("lost") == 9240 - 3561
    assert all("Select" not in lead.custom_fields.values() for lead in leads)
    assert all("Lead Origin" in lead.custom_fields for lead in leads)
    assert all("Prospect ID" not in lead.custom_fields for lead in leads)
    assert leads[1].external_id == "2a272436-5132-4136-86fa-dcc88c88f482"
    assert leads[1].activity == {
        "websiteVisits": 5.0,
        "timeOnSiteSeconds": 674.0,
        "pagesPerVisit": 2.5,
    }
    assert leads[1].company.country == "India"
    assert leads[1].source.channel == "Organic Search"
    # TotalVisits is missing in 137 rows.
    assert sum("websiteVisits" not in lead.activity for lead in leads) == 137
    assert elapsed < 5, f"{len(rows) / elapsed:.0f} rows/s is too slow"


def test_streaming_memory_stays_flat(tmp_path: Path) -> None:
    rows = 200_000
    limit = 20 * 2**20
    path = tmp_path / "leads.csv"
    # The padding makes the file larger than the limit, so an import that read the
    # whole file into memory would fail this test.
    padding = "p" * 100
    with path.open("w", encoding="utf-8") as file:
        file.write("Id,Email,Visits,Converted,Padding\n")
        for number in range(rows):
            email = f"lead{number}@example.org"
            file.write(f"{number},{email},{number % 9},{number % 2},{padding}\n")
    assert path.stat().st_size > limit

    mapping = ImportMapping(
        columns={
            "Id": "externalId",
            "Visits": "activity.websiteVisits",
            "Converted": "outcome",
        },
        unmapped="ignore",
    )

    count = 0
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        with path.open("rb") as stream:
            for row in read_rows(stream, mapping):
                assert isinstance(row, AcceptedRow)
                count += 1
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert count == rows
    assert peak - baseline < limit


def test_consent_columns_become_capture_consent() -> None:
    (lead,) = accepted(
        "Email,Mail OK,SMS OK,Wording\nada@example.com,yes,opted_out,Ja bitte\n",
        columns={
            "Email": "contact.email",
            "Mail OK": "consent.email",
            "SMS OK": "consent.sms",
            "Wording": "consent.text",
        },
    )

    assert lead.consent is not None
    assert lead.consent.email is True
    assert lead.consent.sms is False
    assert lead.consent.text == "Ja bitte"


def test_invalid_consent_cell_rejects_row() -> None:
    row = rejection(
        "Email,Mail OK\nada@example.com,maybe\n",
        columns={"Email": "contact.email", "Mail OK": "consent.email"},
    )

    assert "invalid consent 'maybe'" in str(row.errors)

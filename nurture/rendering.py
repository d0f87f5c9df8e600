"""Jinja2 rendering of message templates.

A template is a folder. `templates/email/<name>/` contains `subject.txt`,
`body.txt` and an optional `body.html`, `templates/sms/<name>/` contains
`body.txt`, and `templates/task/<name>/` a sales task's title (`subject.txt`)
and description (`body.txt`). Undefined values raise, so a missing first
name is an error or a declared fallback
(`{{ lead.firstName | default("there") }}`), never a blank.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment

# A sales task's subject.txt is its title and body.txt its description.
REQUIRED_FILES = {
    "email": ("subject.txt", "body.txt"),
    "sms": ("body.txt",),
    "task": ("subject.txt", "body.txt"),
}


class TemplateError(ValueError):
    """A template that is missing, malformed, or needs a value the lead lacks."""


@dataclass(frozen=True)
class Rendered:
    subject: str | None
    text: str
    html: str | None


def _without_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    return value


class TemplateRenderer:
    """Render message templates from a folder, sandboxed and strict."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.env = SandboxedEnvironment(
            loader=jinja2.FileSystemLoader(str(root)),
            undefined=jinja2.StrictUndefined,
            autoescape=jinja2.select_autoescape(
                enabled_extensions=("html",), default_for_string=False
            ),
            keep_trailing_newline=False,
        )

    def check(self, channel: str, name: str) -> None:
        """Raise TemplateError unless the template exists and compiles."""
        folder = self.root / channel / name
        for filename in REQUIRED_FILES[channel]:
            if not (folder / filename).is_file():
                raise TemplateError(
                    f"template {name!r} not found for channel {channel}: "
                    f"expected {channel}/{name}/{filename} under {self.root}"
                )
        for path in sorted(folder.glob("*")):
            try:
                self.env.get_template(f"{channel}/{name}/{path.name}")
            except jinja2.TemplateSyntaxError as error:
                raise TemplateError(
                    f"template {channel}/{name}/{path.name} line {error.lineno}: "
                    f"{error.message}"
                ) from None

    def check_expression(self, text: str) -> None:
        """Raise TemplateError unless a personalization value compiles."""
        try:
            self.env.from_string(text)
        except jinja2.TemplateSyntaxError as error:
            raise TemplateError(
                f"invalid template expression {text!r}: {error}"
            ) from None

    def render(
        self,
        channel: str,
        name: str,
        lead: dict[str, Any],
        personalization: dict[str, str],
        extras: dict[str, Any] | None = None,
    ) -> Rendered:
        """Render a template for a lead; personalization values become variables.

        `extras` are variables of the send itself, such as `unsubscribe_url`.
        """
        self.check(channel, name)
        context: dict[str, Any] = {"lead": _without_none(lead), **(extras or {})}
        try:
            for key, expression in personalization.items():
                context[key] = self.env.from_string(expression).render(context)
            folder = f"{channel}/{name}"
            text = self.env.get_template(f"{folder}/body.txt").render(context)
            subject = None
            html = None
            if channel in ("email", "task"):
                subject = self.env.get_template(f"{folder}/subject.txt").render(context)
                subject = " ".join(subject.split())
                if (self.root / folder / "body.html").is_file():
                    html = self.env.get_template(f"{folder}/body.html").render(context)
        except jinja2.TemplateSyntaxError as error:
            raise TemplateError(
                f"template {name!r}: invalid expression in personalization or "
                f"template, line {error.lineno}: {error.message}"
            ) from None
        except jinja2.exceptions.SecurityError as error:
            raise TemplateError(
                f"template {name!r} uses something the sandbox forbids: {error}"
            ) from None
        except jinja2.UndefinedError as error:
            raise TemplateError(
                f"template {name!r} needs a value that neither the lead nor the "
                f"step's personalization gives: {error.message}. Fill it in on "
                "the lead or in the step's personalization, or declare a fallback "
                'such as {{ lead.firstName | default("there") }}'
            ) from None
        return Rendered(subject=subject, text=text.strip() + "\n", html=html)

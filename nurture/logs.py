"""Logging set-up shared by the API, the worker and the dev launcher."""

import logging
import os


def configure_logging() -> None:
    """Log to stderr at LOG_LEVEL (default INFO), one line per record."""
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )

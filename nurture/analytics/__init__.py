"""Campaign funnel, A/B results, acquisition, attribution and scoring quality.

Every count, sum, rank and median is computed by the database in one
SQLAlchemy Core statement per table of numbers. Python only adds rates,
statistics and names to the few rows that come back. The same statements run
on PostgreSQL and SQLite: the few functions that differ between the two are
compiled per dialect in `nurture.analytics.sql`.

Time ranges select a cohort and follow it: the funnel counts the enrollments
that started in the range and everything that happened to them since, the
A/B results the leads that reached a split in the range, acquisition the
leads captured in the range, attribution the conversions in the range.

Modules: `funnel`, `splits` (A/B results and the winner rule), `acquisition`
(with attribution) and `scoring`.
"""

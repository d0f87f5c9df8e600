# The API and the worker share this image; docker-compose.yml picks the command.
FROM python:3.11-slim

WORKDIR /app
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
COPY pyproject.toml README.md ./
COPY nurture nurture
COPY workflows workflows
COPY activities activities
COPY api api
COPY worker.py alembic.ini ./
COPY migrations migrations
COPY templates templates
COPY examples examples
RUN pip install .

EXPOSE 8000
CMD ["python", "-m", "api.app"]

# pgveil: small, non-root; the rule file and config are mounted at /etc/pgveil.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proxy ./proxy
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/pgveil --create-home pgveil
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER 10001
WORKDIR /var/lib/pgveil
VOLUME ["/var/lib/pgveil/audit"]
EXPOSE 6432 9187
ENTRYPOINT ["pgveil", "serve", "--config", "/etc/pgveil/pgveil.yaml"]

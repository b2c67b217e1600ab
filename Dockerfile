# Placeholder: the multi-stage, non-root, distroless-style image is built in the deployment issue.
# Until then this builds a plain image that runs `llm-proxy serve` from the locked environment.
FROM python:3.11-slim
WORKDIR /app
COPY . .
RUN pip install --no-cache-dir uv==0.13.9 && uv sync --frozen --no-dev
EXPOSE 50051 9090
USER 65532
CMD [".venv/bin/llm-proxy", "serve"]

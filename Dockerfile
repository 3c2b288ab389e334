FROM python:3.11-slim

RUN useradd --create-home --uid 10001 upstream-bot
WORKDIR /app
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY commands ./commands
RUN pip install --no-cache-dir . && rm -rf /root/.cache

USER upstream-bot
ENV UPSTREAM_BOT_CONFIG=/etc/upstream-bot/upstream-bot.yml
EXPOSE 3000
# Socket Mode with SLACK_APP_TOKEN; for HTTP mode: upstream-bot serve --http --host 0.0.0.0 --port 3000
CMD ["upstream-bot", "serve"]

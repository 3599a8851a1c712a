"""The OpenAI-compatible HTTP API: starlette app, OpenAI <-> internvl.v1 conversion, media URL fetching."""

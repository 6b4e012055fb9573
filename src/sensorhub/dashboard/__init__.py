"""One user's live dashboard: a Starlette app fed by that user's Redis log and channel."""

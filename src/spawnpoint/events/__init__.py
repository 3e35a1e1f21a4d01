"""Events: the outbox rows that describe changes, and `GET /api/events`, which lists them."""

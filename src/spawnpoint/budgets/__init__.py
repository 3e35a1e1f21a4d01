"""Budgets as they bear on spawns and running workspaces: periods in the tenant's time zone,
standings, and the budgets in scope (see `standing`)."""

"""The tamper-evident audit log: hash chains per tenant, signed checkpoints, retention."""

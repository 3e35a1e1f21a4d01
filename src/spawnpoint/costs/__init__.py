"""Money: cost metering of running workspaces (see `metering`)."""

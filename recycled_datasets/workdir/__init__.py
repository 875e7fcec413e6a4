"""The workdir contract: its layout, one schema per table, the config-name rule, the one atomic writer."""

"""The trainer: mpt-train (python -m mpt_ext.train)."""

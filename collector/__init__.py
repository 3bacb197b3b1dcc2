"""The collector: consume result hashes and store them (never a license number)."""

"""The producer: publish license-number jobs at a rate, a load profile or a trace."""

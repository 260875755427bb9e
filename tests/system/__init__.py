"""The whole system: every program as a real process under supervisord or on the emulated cloud."""

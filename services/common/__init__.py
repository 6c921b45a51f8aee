"""What every service shares: settings, structured logging, health and metrics, the runner."""

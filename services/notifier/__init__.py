"""The notifier: signed webhooks (Standard Webhooks) to users' endpoints about their jobs."""

"""What operators see of the running App: metrics and log lines. A leaf layer: it imports only `app.core`."""

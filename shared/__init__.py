"""Code both the gateway and the auth worker import: settings, errors, message models, tokens."""

"""Request/reply between gateways and workers over RabbitMQ, and in process for tests."""

"""HTTP gateway: validates requests, publishes them over RabbitMQ, maps replies to HTTP."""

"""Delivery: sinks drain the outbox. A view is marked delivered only when its sink confirms it
(PUBACK for MQTT); anything unconfirmed is sent again, under the same message id."""
